"""The cluster end to end on this machine: spread, a full cluster, offer latency, a node killed.

    python -m bench.cluster --json bench/results/cluster.json [--kill] [--nodes 3] [--capacity 2]
    python -m bench.cluster --hold --port 8090    # a front on a local cluster, for bench.churn/fuzz

Starts a real multi-node Ray cluster on loopback (`server.cluster.local`: head + N raylets, each
node's render node actor with its own worker pipeline) and a front serving HTTP on a free port
(`server.cluster.front`), then with real aiortc viewers:
- spread: N x capacity sessions, counted per node; one more must get 503 + Retry-After;
- offer latency: `--offers` offers through the front (HTTP POST /offer) against as many straight
  to a node (the Ray call the front makes), each connected and closed, p50/p95;
- `--kill`: one driven session per node (30 Hz controls), the first node's process tree SIGKILLed
  mid-stream: how long until its page is told why (the session's event stream), the longest gap
  in the other sessions' video around the kill, how long until the node is back, and that it then
  takes an offer; then every session closed and each node's leak counts read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import rtc_client
from bench.local_server import free_port, write_report
from bench.rtc_client import Viewer
from engine.pipeline.schedule import Schedule
from engine.render.avatar import DEFAULT_AVATAR
from server.app import ServerConfig, create_app
from server.cluster.front import NAMESPACE, ClusterHost
from server.cluster.local import kill_process_tree, local_cluster
from server.ice import use_loopback_only

UP_LIMIT_S = 300.0  # nodes load the avatar and start their workers
DRIVE_HZ = 30.0
LEAK_KEYS = ("peer_connections", "pipeline_sessions", "worker_sessions")


async def _json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as r:
        r.raise_for_status()
        body: dict[str, Any] = await r.json()
        return body


async def _wait_nodes(http: aiohttp.ClientSession, url: str, up: int) -> float:
    start = time.monotonic()
    while (await _json(http, f"{url}/health"))["nodes_up"] < up:
        if time.monotonic() - start > UP_LIMIT_S:
            raise TimeoutError(f"fewer than {up} nodes up after {UP_LIMIT_S:g} s")
        await asyncio.sleep(0.25)
    return round(time.monotonic() - start, 2)


def _held(stats: dict[str, Any]) -> int:
    """Sessions still held anywhere: the front's list, each node's peers and worker state."""
    nodes = [n["stats"].get("resources", {}) for n in stats["nodes"] if n["stats"]]
    return len(stats["sessions"]) + sum(r.get(k) or 0 for r in nodes for k in LEAK_KEYS)


async def _wait_idle(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """/api/stats once nothing is held (workers release a closed session's caches
    asynchronously), or as it is after a minute."""
    deadline = time.monotonic() + 60.0
    while True:
        stats = await _json(http, f"{url}/api/stats")
        if not _held(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.5)


def _pcts(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "n": len(ordered),
    }


async def spread(http: aiohttp.ClientSession, url: str, slots: int) -> dict[str, Any]:
    viewers = [await rtc_client.connect(http, url) for _ in range(slots)]
    placed = collections.Counter(v.node for v in viewers)
    body = {"type": "offer", "sdp": "v=0\r\n"}
    async with http.post(f"{url}/offer", json=body) as r:
        full = {"status": r.status, "retry_after": r.headers.get("Retry-After")}
    for v in viewers:
        await v.close()
    await _wait_idle(http, url)
    return {"sessions": slots, "per_node": sorted(placed.values()), "one_more": full}


async def offer_latency(http: aiohttp.ClientSession, url: str, offers: int) -> dict[str, Any]:
    """`offers` through the front, then as many straight to one node (alternating nodes)."""
    import ray

    via_front, direct = [], []
    for _ in range(offers):
        viewer = await rtc_client.connect(http, url)
        via_front.append(viewer.offer_ms)
        await viewer.close()
        await asyncio.sleep(0.05)
    health = await _json(http, f"{url}/health")
    names = [n["name"] for n in health["nodes"] if n["up"]]
    for i in range(offers):
        handle = ray.get_actor(names[i % len(names)], namespace=NAMESPACE)

        async def exchange(offer: dict[str, str], node: Any = handle) -> dict[str, Any]:
            reply = await node.offer.remote(offer["sdp"], False)
            if "answer" not in reply:
                raise RuntimeError(f"the node refused: {reply}")
            answer: dict[str, Any] = reply["answer"]
            return answer

        viewer = await rtc_client.connect_with(exchange)
        direct.append(viewer.offer_ms)
        await viewer.close()
        await asyncio.sleep(0.05)
    await _wait_idle(http, url)
    return {"via_front_ms": _pcts(via_front), "straight_to_node_ms": _pcts(direct)}


async def _drive(viewer: Viewer, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        if viewer.channel.readyState != "open":
            return
        i += 1
        viewer.control(pose={"yaw": 10.0 * ((i % 60) / 30.0 - 1.0)})
        await asyncio.sleep(1.0 / DRIVE_HZ)


async def _arrivals(viewer: Viewer, into: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(viewer.frames.get(), 0.5)
            into.append(got.arrived)


def _longest_gap(arrivals: list[float], start: float, end: float) -> float:
    inside = [t for t in arrivals if start <= t <= end]
    edges = [start, *inside, end]
    return round(max(b - a for a, b in itertools.pairwise(edges)) * 1000.0, 1)


async def kill_one(http: aiohttp.ClientSession, url: str, nodes: int) -> dict[str, Any]:
    viewers = [await rtc_client.connect(http, url) for _ in range(nodes)]
    stop = asyncio.Event()
    arrivals: dict[str, list[float]] = {v.session: [] for v in viewers}
    tasks = [asyncio.ensure_future(_drive(v, stop)) for v in viewers]
    tasks += [asyncio.ensure_future(_arrivals(v, arrivals[v.session], stop)) for v in viewers]
    victim, *others = viewers
    assert victim.events is not None
    told = asyncio.ensure_future(rtc_client.ended_reason(http, victim.events, url))
    await asyncio.sleep(5.0)
    health = await _json(http, f"{url}/health")
    node = next(n for n in health["nodes"] if n["name"] == victim.node)
    killed_at = time.monotonic()
    killed = kill_process_tree(node["load"]["pid"])
    reason = await asyncio.wait_for(told, 60.0)
    told_s = time.monotonic() - killed_at
    await _wait_nodes(http, url, nodes)
    back_s = round(time.monotonic() - killed_at, 2)
    await asyncio.sleep(max(0.0, killed_at + 10.0 - time.monotonic()))
    stop.set()
    for task in tasks:
        with contextlib.suppress(Exception):
            await task
    gaps = {
        v.node or v.session: _longest_gap(arrivals[v.session], killed_at - 1.0, killed_at + 10.0)
        for v in others
    }
    before_gaps = {
        v.node or v.session: _longest_gap(arrivals[v.session], killed_at - 4.0, killed_at)
        for v in others
    }
    again = [await rtc_client.connect(http, url) for _ in range(nodes)]
    retaken = victim.node in {v.node for v in again}
    for v in [*viewers, *again]:
        await v.close()
    closed_at = time.monotonic()
    stats = await _wait_idle(http, url)
    settle_s = round(time.monotonic() - closed_at, 2)
    leaks = {
        n["name"]: {k: n["stats"].get("resources", {}).get(k) for k in LEAK_KEYS}
        for n in stats["nodes"]
    }
    return {
        "killed_node": victim.node,
        "killed_pids": len(killed),
        "reason": reason,
        "told_s": round(told_s, 2),
        "node_back_s": back_s,
        "offers_to_restarted_node": retaken,
        "other_sessions_longest_gap_ms": gaps,
        "other_sessions_longest_gap_before_kill_ms": before_gaps,
        "leak_counts_after": leaks,
        "settle_s": settle_s,
        "sessions_left": len(stats["sessions"]),
    }


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "nodes": args.nodes,
        "capacity": args.capacity,
        "avatar": str(args.avatar),
        "schedule": f"sequential, 1 worker, {args.num_warps} warps per cache, per node",
    }
    async with aiohttp.ClientSession() as http:
        report["nodes_up_s"] = await _wait_nodes(http, url, args.nodes)
        report["spread"] = await spread(http, url, args.nodes * args.capacity)
        report["offer_latency"] = await offer_latency(http, url, args.offers)
        if args.kill:
            report["kill"] = await kill_one(http, url, args.nodes)
    return report


async def serve(args: argparse.Namespace) -> dict[str, Any] | None:
    config = ServerConfig(
        avatar_path=args.avatar,
        schedule=Schedule("sequential", 1, args.num_warps),
        loopback_only=True,
        max_sessions=args.capacity,
        precision=args.precision,
        runtime="torch",
        token=args.token,
    )
    use_loopback_only()
    runner = web.AppRunner(create_app(config, ClusterHost))
    await runner.setup()
    port = args.port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        if args.hold:
            print(f"front of a {args.nodes}-node local cluster at {url} (Ctrl-C stops)", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return None
        return await measure(args, url)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=2, help="sessions per node")
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR)
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--precision", default="fp32", help="each node's (auto measures there)")
    parser.add_argument("--offers", type=int, default=50, help="per path, for the offer latency")
    parser.add_argument("--kill", action="store_true", help="kill a node mid-stream")
    parser.add_argument("--hold", action="store_true", help="serve the front until Ctrl-C")
    parser.add_argument("--port", type=int, default=0, help="the front's port (default: free)")
    parser.add_argument("--token", help="with --hold: the front's --token")
    parser.add_argument("--json", type=Path, help="where the report goes")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.capacity < 1 or args.offers < 1:
        parser.error("--nodes must be at least 2, --capacity and --offers at least 1")
    if not args.hold and args.json is None:
        parser.error("--json is required unless --hold")
    if args.token and not args.hold:
        parser.error("--token is for --hold (the measurements run without one)")
    with local_cluster(args.nodes):
        report = asyncio.run(serve(args))
    if report is not None and args.json is not None:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
