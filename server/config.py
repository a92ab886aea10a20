"""What one server (or one render node of a cluster) is told at start: `ServerConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiortc import RTCIceServer

from engine.pipeline.dispatcher import PipelineSettings
from engine.pipeline.schedule import DEFAULT_SCHEDULE, Schedule
from engine.render.avatar import DEFAULT_AVATAR
from engine.render.backends.select import Selection, choose
from engine.render.backends.stages import FP32, BackendChoice


@dataclass(frozen=True)
class ServerConfig:
    """host, port; avatar_path; schedule: how the workers render (see engine.pipeline.schedule); device:
    None = cuda where there are GPUs, else cpu; ice_servers: STUN/TURN (none: local use);
    max_sessions; session_ttl_s: the longest a session may live; loopback_only: gather ICE
    candidates on 127.0.0.1 only (tests and benchmarks on one machine)."""

    host: str = "127.0.0.1"
    port: int = 8080
    avatar_path: Path = DEFAULT_AVATAR
    schedule: Schedule = DEFAULT_SCHEDULE
    device: str | None = None
    ice_servers: tuple[RTCIceServer, ...] = ()
    max_sessions: int = 4
    session_ttl_s: float = 3600.0
    loopback_only: bool = False
    codec: str = "vp8"  # the page's setCodecPreferences choice (aiortc's answerer cannot choose)
    # When set, every route but the page's own files needs "Authorization: Bearer <token>";
    # /metrics takes `metrics_token` instead where one is set (a Prometheus scraper's own).
    token: str | None = None
    metrics_token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # cross-origin pages allowed to POST (same origin always)
    # How the workers run the networks (engine.render.backends.select): "auto" measures at start-up
    # (cached per avatar and machine); fp32 torch, the tests' default, measures nothing.
    precision: str = "fp32"
    runtime: str = "torch"
    backend_cache: Path | None = None
    # Stills (GET /still.png) render in a niced process of their own (server.stills); at most
    # this many wait or render at once, the next is answered 429.
    stills_queue: int = 4
    # Live, a frame whose controls lie past the jump limit from its cache's: warped while a cache
    # starts early ("rebuild") or generated ("generate"); engine.pipeline.settings.JUMPS.
    jumps: str = "rebuild"

    def pipeline_settings(self, backend: BackendChoice = FP32) -> PipelineSettings:
        devices = None if self.device is None else (self.device,) * self.schedule.workers
        return PipelineSettings(
            self.avatar_path,
            self.schedule,
            mode="live",
            devices=devices,
            backend=backend,
            jumps=self.jumps,
        )

    def choose_backend(self) -> Selection:
        """The workers' backends (blocking: measures the candidates unless the cache knows)."""
        settings = self.pipeline_settings()
        return choose(
            self.avatar_path,
            self.precision,
            self.runtime,
            settings.worker_devices()[0],
            settings.worker_threads(),
            self.backend_cache,
            self.schedule.num_warps,
        )
