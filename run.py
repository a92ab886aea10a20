"""Start the server: `python run.py` serves the shipped avatar at http://127.0.0.1:8080.

python run.py [--host H] [--port P] [--avatar A] [--device D] [--workers N] [--num-warps W]
              [--jumps rebuild|generate]
              [--precision auto|fp32|bf16|fp16|int8] [--runtime auto|torch|onnxruntime|openvino]
              [--codec vp8|h264] [--max-bitrate BPS] [--ice-server URL ...]
              [--max-sessions S] [--session-ttl SECONDS] [--token T] [--metrics-token M]
              [--stills-queue Q] [--cluster ADDRESS]

With --cluster, this process is a front: no renderer here; each offer goes to a render node of the
Ray cluster at ADDRESS (every machine started with `ray start --resources '{"avatar_node": 1}'`),
each node rendering with the options given here (server.cluster.front).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aiohttp import web
from aiortc import RTCIceServer

from engine.pipeline.schedule import Schedule
from engine.pipeline.settings import JUMPS
from engine.render.avatar import DEFAULT_AVATAR, Avatar
from engine.render.backends.select import CHOICES, RUNTIME_CHOICES
from engine.runtime import limit_arenas, tune_allocator
from server.app import ServerConfig, create_app
from server.codecs import CODECS, set_max_bitrate
from server.host import Host


def ice_server(text: str) -> RTCIceServer:
    """stun:host:port, or turn[s]://user:password@host:port (credentials URL-encoded)."""
    if text.startswith("stun:"):
        return RTCIceServer(urls=text)
    parts = urlsplit(text)
    if parts.scheme not in ("turn", "turns") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"--ice-server must be stun:HOST[:PORT] or turn://USER:PASSWORD@HOST[:PORT], got {text!r}"
        )
    port = f":{parts.port}" if parts.port else ""
    return RTCIceServer(
        urls=f"{parts.scheme}:{parts.hostname}{port}",
        username=unquote(parts.username or ""),
        credential=unquote(parts.password or ""),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the neural avatar over WebRTC")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--avatar",
        type=Path,
        default=DEFAULT_AVATAR,
        help="avatar file (engine.training.train's output)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: GPUs if any)")
    parser.add_argument("--workers", type=int, default=2, help="render worker processes")
    parser.add_argument(
        "--num-warps", type=int, default=4, help="warped frames per cache (0: generator only)"
    )
    parser.add_argument(
        "--jumps",
        choices=JUMPS,
        default="rebuild",
        help="a frame whose controls lie past the jump limit from its cache's: warped while a new "
        "cache starts at once (rebuild: the frame rate holds under load) or generated (generate: "
        "the face asked for, the frames behind it wait)",
    )
    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default="auto",
        help="the networks' precision; auto: the fastest that passes the quality gate here",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="torch, onnxruntime or openvino; auto: the fastest that passes the quality gate here",
    )
    parser.add_argument("--codec", choices=CODECS, default="vp8", help="the page's preference")
    parser.add_argument("--max-bitrate", type=int, default=1_000_000, help="bits per second")
    parser.add_argument(
        "--ice-server", type=ice_server, action="append", default=[], help="STUN/TURN URL"
    )
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--session-ttl", type=float, default=3600.0, help="seconds")
    parser.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on every route but the page's own files",
    )
    parser.add_argument(
        "--metrics-token", help="the token GET /metrics takes instead (a Prometheus scraper's)"
    )
    parser.add_argument(
        "--stills-queue",
        type=int,
        default=4,
        help="stills rendering or waiting at once (per node); one more is answered 429",
    )
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run as the front of the Ray cluster at ADDRESS (host:port, or 'auto')",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        help="another origin (scheme://host:port) whose pages may connect; repeatable",
    )
    parser.add_argument(
        "--loopback-only",
        action="store_true",
        help="offer ICE candidates on 127.0.0.1 only (tests and benchmarks on one machine)",
    )
    args = parser.parse_args(argv)
    try:
        if args.num_warps == 0:
            schedule = Schedule("generator", args.workers)
        elif args.workers == 1:
            schedule = Schedule("sequential", 1, args.num_warps)
        else:
            schedule = Schedule("parallel", args.workers, args.num_warps)
        if args.max_sessions < 1 or args.session_ttl <= 0 or args.stills_queue < 1:
            raise ValueError("--max-sessions, --session-ttl and --stills-queue must be positive")
        set_max_bitrate(args.max_bitrate)
        Avatar.load(args.avatar)  # fail here, with the reason, not inside the server's start-up
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tune_allocator()
    limit_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        avatar_path=args.avatar,
        schedule=schedule,
        device=args.device,
        ice_servers=tuple(args.ice_server),
        max_sessions=args.max_sessions,
        session_ttl_s=args.session_ttl,
        codec=args.codec,
        loopback_only=args.loopback_only,
        token=args.token,
        metrics_token=args.metrics_token,
        stills_queue=args.stills_queue,
        allowed_origins=tuple(args.allowed_origin),
        precision=args.precision,
        runtime=args.runtime,
        jumps=args.jumps,
    )
    if args.cluster:  # each node chooses its own backends, for its own machine
        from server.cluster.front import ClusterHost

        def front(c: ServerConfig) -> Host:
            return ClusterHost(c, args.cluster)

        logging.info(
            "front of the Ray cluster at %s on http://%s:%d", args.cluster, args.host, args.port
        )
        web.run_app(create_app(config, front), host=config.host, port=config.port, print=None)
        return 0
    try:  # measured here, before serving, so that an impossible request fails with its reason
        selection = config.choose_backend()  # cached: the server's start-up reads it back
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.info(
        "serving %s on http://%s:%d (%s; %s)",
        args.avatar,
        args.host,
        args.port,
        schedule.label,
        selection.choice.label,
    )
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
