"""The front: the app's host over a Ray cluster's render nodes (`python run.py --cluster ADDR`).

Every node of the cluster that declares the resource `avatar_node` (`ray start --resources
'{"avatar_node": 1}'`) gets one render node actor (`server.cluster.node_actor`), pinned to it,
detached (it outlives the front: a front that restarts loses no session, the media never went
through it) and restarted by Ray when its process dies. Nodes that join later are found within
DISCOVER_S and take offers once they report ready.

A heartbeat asks every node for its load each HEARTBEAT_S. Offers go to the node with the most
free slots (`server.cluster.placement`); 503 + Retry-After only when every node is full. A node
whose actor died, or that comes back as a new process, has lost its sessions: the front records
why (`server.ends`) and the pages listening on their session's events learn it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from prometheus_client.core import GaugeMetricFamily, Metric
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from server import protocol
from server.cluster.node_actor import RenderNode
from server.cluster.placement import NodeLoad, ranked
from server.codecs import max_bitrate
from server.config import ServerConfig
from server.ends import SessionEnds
from server.metrics import server_metrics
from server.node import RETRY_AFTER_S, BadOffer, NodeFull
from server.stills import StillsBusy

NAMESPACE = "avatar"
NODE_RESOURCE = "avatar_node"
HEARTBEAT_S = 0.5
LOAD_TIMEOUT_S = 2.0  # a load call slower than this marks the node unresponsive (no new offers)
UNRESPONSIVE_LIMIT = 5  # ... and this many in a row: its sessions are given up
DISCOVER_S = 2.0
WATCH_S = 30.0  # how long one `watch` call stays open before the next replaces it
STATS_EVERY = 4  # heartbeats between refreshes of the figures /metrics shows
CALL_TIMEOUT_S = 30.0  # an offer (ICE gathering) or a still
ROOT = Path(__file__).resolve().parents[2]
LOG = logging.getLogger(__name__)


@dataclass
class _NodeState:
    name: str
    ray_node_id: str
    handle: Any
    up: bool = False
    pid: int | None = None
    load: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # offers sent, not yet answered
    misses: int = 0  # heartbeats in a row without an answer
    downs: int = 0  # times seen going down
    last_error: str | None = None
    watch: asyncio.Task[None] | None = None  # the open `watch` call on the node's process


def join(address: str | None) -> None:
    """Connect this process to the cluster at `address` (once; a test's own connection stands).
    The nodes import this checkout: the same path on every machine, or installed there."""
    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address=address,
        namespace=NAMESPACE,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        logging_level=logging.WARNING,
    )


def node_name(ray_node_id: str) -> str:
    return f"render-{ray_node_id[:10]}"


class ClusterHost:
    """server.host.Host over the cluster's render nodes (use from one event loop)."""

    def __init__(self, config: ServerConfig, address: str | None = None) -> None:
        self.config = config
        self.address = address
        self.ends = SessionEnds()
        self.nodes: dict[str, _NodeState] = {}
        self.placed: dict[str, tuple[str, float]] = {}  # session -> (node, when placed)
        self.offers = 0
        self.refused_full = 0
        self._stills_in_flight = 0
        self._avatar_info: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ticks = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, join, self.address)
        await self._discover()
        self._tasks = [
            asyncio.ensure_future(self._every(DISCOVER_S, self._discover)),
            asyncio.ensure_future(self._every(HEARTBEAT_S, self._heartbeat)),
        ]
        await self._heartbeat()

    async def close_sessions(self) -> None:
        """Nothing: the sessions live on their nodes, which outlive a front."""

    async def close(self) -> None:
        for state in self.nodes.values():
            if state.watch is not None:
                state.watch.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every(self, period_s: float, step: Any) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await step()
            except Exception:  # one failed round must not stop the next
                LOG.exception("cluster front: %s failed", step.__name__)

    # ------------------------------------------------------------------ membership

    async def _discover(self) -> None:
        """One render node actor for every live Ray node that offers NODE_RESOURCE; nodes that
        left are dropped (their sessions told)."""
        loop = asyncio.get_running_loop()
        ray_nodes = await loop.run_in_executor(None, ray.nodes)
        alive = {
            n["NodeID"]
            for n in ray_nodes
            if n.get("Alive") and n.get("Resources", {}).get(NODE_RESOURCE, 0) > 0
        }
        for ray_node_id in sorted(alive):
            name = node_name(ray_node_id)
            if name not in self.nodes:
                handle = await loop.run_in_executor(None, self._actor, ray_node_id, name)
                self.nodes[name] = _NodeState(name, ray_node_id, handle)
                LOG.info("cluster front: node %s joined", name)
        for name, state in list(self.nodes.items()):
            if state.ray_node_id not in alive:
                LOG.warning("cluster front: node %s left the cluster", name)
                self._lost(state, f"its render node {name} left the cluster")
                del self.nodes[name]

    def _actor(self, ray_node_id: str, name: str) -> Any:
        """The node's actor: the one already there (started by an earlier front), or a new one."""
        options = {
            "name": name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,  # a killed node process comes back; its sessions do not
            "max_task_retries": 0,  # an offer is never replayed on a restarted node
            "num_cpus": 0,  # the node's workers use its CPUs; the actor only coordinates
            "max_concurrency": 1000,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(ray_node_id, soft=False),
        }
        bits = max_bitrate()["vp8"]  # run.py sets both codecs alike
        return ray.remote(RenderNode).options(**options).remote(self.config, name, bits)

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        self._ticks += 1
        refresh = self._ticks % STATS_EVERY == 0
        await asyncio.gather(*(self._beat(s, refresh) for s in list(self.nodes.values())))

    async def _beat(self, state: _NodeState, refresh: bool) -> None:
        asked = time.monotonic()
        try:
            load = await asyncio.wait_for(_awaited(state.handle.load.remote()), LOAD_TIMEOUT_S)
        except TimeoutError:
            state.misses += 1
            state.last_error = f"no answer within {LOAD_TIMEOUT_S:g} s"
            if state.up and state.misses >= UNRESPONSIVE_LIMIT:
                self._lost(state, f"its render node {state.name} stopped answering")
            return
        except Exception as exc:  # the actor died or is restarting (ray.exceptions.*)
            state.misses += 1
            state.last_error = f"{type(exc).__name__}: {exc}"
            if state.up or state.pid is not None:
                self._lost(state, f"its render node {state.name} stopped")
            return
        state.misses = 0
        state.last_error = load.get("error")
        if state.pid is not None and load.get("pid") not in (None, state.pid):
            self._lost(state, f"its render node {state.name} restarted")
        if load.get("ready"):
            if not state.up:
                LOG.info("cluster front: node %s is up (pid %s)", state.name, load.get("pid"))
            state.up, state.pid, state.load = True, load.get("pid"), load
            if state.watch is None or state.watch.done():
                state.watch = asyncio.ensure_future(self._watch(state, state.pid))
            self._sessions_ended(state, load, asked)
            if refresh:
                with contextlib.suppress(Exception):
                    state.stats = await asyncio.wait_for(
                        _awaited(state.handle.stats.remote()), LOAD_TIMEOUT_S
                    )

    async def _watch(self, state: _NodeState, pid: int | None) -> None:
        """Keep a `watch` call open on the node's process while it is the same one: the call
        fails the moment the process dies."""
        while state.pid == pid:
            try:
                await _awaited(state.handle.watch.remote(WATCH_S))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if state.pid == pid:  # not already handled by a heartbeat
                    state.last_error = f"{type(exc).__name__}: {exc}"
                    self._lost(state, f"its render node {state.name} stopped")
                return

    def _lost(self, state: _NodeState, reason: str) -> None:
        """The node's process is gone (or going): its sessions went with it."""
        if state.up:
            state.downs += 1
            LOG.warning("cluster front: node %s is down: %s", state.name, state.last_error)
        state.up, state.pid, state.load, state.stats = False, None, {}, {}
        for sid, (node, _) in list(self.placed.items()):
            if node == state.name:
                del self.placed[sid]
                self.ends.ended(sid, reason)

    def _sessions_ended(self, state: _NodeState, load: dict[str, Any], asked: float) -> None:
        """Sessions the node no longer holds (placed before this load was asked for)."""
        holding = set(load.get("session_ids", ()))
        ended = load.get("ended", {})
        for sid, (node, placed) in list(self.placed.items()):
            if node == state.name and placed < asked and sid not in holding:
                del self.placed[sid]
                self.ends.ended(sid, ended.get(sid, "the session ended"))
        for sid in holding - set(self.placed):
            # A session from before this front started: known again, so that it can be told.
            self.placed[sid] = (state.name, asked)
            self.ends.opened(sid)

    # ------------------------------------------------------------------ placement

    def _loads(self) -> list[NodeLoad]:
        return [
            NodeLoad(
                s.name,
                s.up and s.misses == 0,  # a node late with its load takes no new session
                int(s.load.get("free", 0)) - s.pending,
                s.load.get("latency_p50_ms"),
            )
            for s in self.nodes.values()
        ]

    async def offer(self, sdp: str, floor: bool) -> dict[str, Any]:
        self.offers += 1
        order = ranked(self._loads())
        for name in order:
            state = self.nodes.get(name)
            if state is None or not state.up:
                continue
            state.pending += 1
            try:
                reply = await asyncio.wait_for(
                    _awaited(state.handle.offer.remote(sdp, floor)), CALL_TIMEOUT_S
                )
            except Exception as exc:  # died while answering: the next node may
                LOG.warning("cluster front: node %s failed an offer: %r", name, exc)
                continue
            finally:
                state.pending -= 1
            if "bad" in reply:
                raise BadOffer(reply["bad"])
            if "full" in reply:
                state.load = {**state.load, "free": 0}
                continue
            answer: dict[str, Any] = reply["answer"]
            sid = answer["session"]
            self.placed[sid] = (name, time.monotonic())
            self.ends.opened(sid)
            state.load = {**state.load, "free": max(0, int(state.load.get("free", 1)) - 1)}
            return {**answer, "node": name}
        self.refused_full += 1
        up = sum(s.up for s in self.nodes.values())
        raise NodeFull(
            f"every render node is full ({up} up of {len(self.nodes)}); try again shortly",
            RETRY_AFTER_S,
        )

    async def still_png(self, state_json: str) -> bytes:
        up = [s for s in self.nodes.values() if s.up]
        # The front bounds stills as each node does: at most stills_queue per node in flight.
        if not up or self._stills_in_flight >= self.config.stills_queue * len(up):
            raise StillsBusy("every render node is busy with stills", 1)
        node = min(up, key=lambda s: (-int(s.load.get("free", 0)), s.name))
        self._stills_in_flight += 1
        try:
            reply = await asyncio.wait_for(
                _awaited(node.handle.still_png.remote(state_json)), CALL_TIMEOUT_S
            )
        except Exception as exc:  # the node died or timed out: not the client's fault
            raise NodeFull(f"render node {node.name} failed the still: {exc!r}", 1) from exc
        finally:
            self._stills_in_flight -= 1
        if "bad" in reply:
            raise protocol.ProtocolError(reply["bad"])
        if "busy" in reply:
            raise StillsBusy(reply["busy"], reply["retry_after_s"])
        png: bytes = reply["png"]
        return png

    # ------------------------------------------------------------------ what it tells

    async def avatar_info(self) -> dict[str, Any]:
        if self._avatar_info is None:
            up = [s for s in self.nodes.values() if s.up]
            if not up:
                raise NodeFull("no render node is up yet; try again shortly", RETRY_AFTER_S)
            try:
                info = await asyncio.wait_for(_awaited(up[0].handle.avatar_info.remote()), 10.0)
            except Exception as exc:
                raise NodeFull(f"render node {up[0].name} did not answer: {exc!r}") from exc
            self._avatar_info = info
        return {**self._avatar_info, "cluster": True}

    def _node_brief(self, s: _NodeState) -> dict[str, Any]:
        return {
            "name": s.name,
            "up": s.up,
            "ray_node_id": s.ray_node_id,
            "downs": s.downs,
            "error": s.last_error,
            "load": s.load,
        }

    async def health(self) -> dict[str, Any]:
        up = sum(s.up for s in self.nodes.values())
        status = "ok" if up and up == len(self.nodes) else ("degraded" if up else "down")
        return {
            "status": status,
            "cluster": True,
            "nodes_up": up,
            "nodes_total": len(self.nodes),
            "sessions": len(self.placed),
            "free": sum(max(0, int(s.load.get("free", 0))) for s in self.nodes.values() if s.up),
            "nodes": [self._node_brief(s) for s in self.nodes.values()],
        }

    async def stats(self) -> dict[str, Any]:
        async def one(s: _NodeState) -> dict[str, Any]:
            if not s.up:
                return {}
            with contextlib.suppress(Exception):
                stats: dict[str, Any] = await asyncio.wait_for(
                    _awaited(s.handle.stats.remote()), LOAD_TIMEOUT_S * 2
                )
                s.stats = stats
                return stats
            return {}

        states = list(self.nodes.values())
        fresh = await asyncio.gather(*(one(s) for s in states))
        sessions: dict[str, Any] = {}
        closed: dict[str, int] = {}
        # Summed over the nodes that answered: a leak anywhere shows in the sum (bench.churn
        # reads these from a front as from one server).
        resources: dict[str, float] = {}
        workers: list[dict[str, Any]] = []
        nodes = []
        for s, stats in zip(states, fresh, strict=True):
            for sid, st in stats.get("sessions", {}).items():
                sessions[sid] = {**st, "node": s.name}
            for reason, n in stats.get("closed", {}).items():
                closed[reason] = closed.get(reason, 0) + n
            for key, value in stats.get("resources", {}).items():
                if isinstance(value, int | float):
                    resources[key] = round(resources.get(key, 0) + value, 2)
            workers += [{**w, "node": s.name} for w in stats.get("workers", [])]
            nodes.append({**self._node_brief(s), "stats": stats})
        return {
            "cluster": True,
            "sessions": sessions,
            "closed": closed,
            "resources": resources,
            "workers": workers,
            "nodes": nodes,
            "front": {
                "offers": self.offers,
                "refused_full": self.refused_full,
                "placed": {sid: node for sid, (node, _) in self.placed.items()},
                "stills_in_flight": self._stills_in_flight,
            },
        }

    def metrics(self) -> Iterator[Metric]:
        """Every node's families (labelled with its name), merged by family, and the nodes'
        own gauges; from the figures the heartbeat last fetched (a scrape never waits)."""
        merged: dict[str, Metric] = {}
        for s in self.nodes.values():
            st = s.stats
            if not (s.up and st):
                continue
            families = server_metrics(
                st.get("sessions", {}),
                st.get("workers", []),
                st.get("resources", {}),
                st.get("closed", {}),
                node=s.name,
            )
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        up = GaugeMetricFamily("avatar_node_up", "1 if a render node answers", labels=["node"])
        free = GaugeMetricFamily("avatar_node_free_slots", "Session slots free", labels=["node"])
        for s in self.nodes.values():
            up.add_metric([s.name], 1.0 if s.up else 0.0)
            free.add_metric([s.name], float(s.load.get("free", 0)) if s.up else 0.0)
        count = GaugeMetricFamily("avatar_nodes_up", "Render nodes that answer")
        count.add_metric([], float(sum(s.up for s in self.nodes.values())))
        return iter([*merged.values(), up, free, count])


async def _awaited(ref: Any) -> Any:
    return await ref
