"""A Ray cluster on this one machine, on loopback: for the tests and `bench.cluster`.

Each node is a real raylet process group with its own resources (`ray.cluster_utils.Cluster`);
the head carries no `avatar_node`, so it hosts the front's driver only. Ray must be told to keep
a local cluster on 127.0.0.1 before it is imported (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); without
it the nodes bind the machine's other address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psutil

from server.cluster.front import NODE_RESOURCE, ROOT

# Node death is noticed in ~1.5-2.5 s instead of ~14 s (Ray's health checks; the issue measured).
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[Any]:
    """A head (the driver: this process) and `nodes` render nodes; shut down on exit, with
    every actor the front made (they are detached: nothing else would stop them)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by the nodes' processes
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # ... and by this one, which imported ray already
    path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus_per_node, resources={NODE_RESOURCE: 1})
        ray.init(address=cluster.address, namespace="avatar", logging_level=logging.WARNING)
        yield cluster
    finally:
        stop_render_nodes()
        ray.shutdown()
        cluster.shutdown()


def stop_render_nodes() -> None:
    """Kill every render node actor in the namespace (detached: they outlive any front)."""
    import ray

    if not ray.is_initialized():
        return
    for name in _render_node_names():
        with suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace="avatar"), no_restart=True)


def _render_node_names() -> list[str]:
    import ray

    return [
        f"render-{n['NodeID'][:10]}"
        for n in ray.nodes()
        if n.get("Resources", {}).get(NODE_RESOURCE, 0) > 0 or not n.get("Alive")
    ]


def kill_process_tree(pid: int) -> list[int]:
    """SIGKILL a node's process and everything it started (its render workers, its still
    renderer): what a machine's crash does to them. Returns the pids killed."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    victims = [root, *root.children(recursive=True)]
    for p in victims:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    return [p.pid for p in victims]
