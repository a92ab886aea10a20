"""ICE candidate gathering for peers on one machine (tests, benchmarks, `run.py --loopback-only`).

Kept apart from `server.app` so that a client (`bench.rtc_client`, started once per abrupt churn
cycle) can use it without importing the renderer and torch.
"""

from __future__ import annotations

import aioice.ice


def use_loopback_only() -> None:
    """aioice gathers host candidates on every address but 127.0.0.1; on one machine (tests,
    benchmarks) only 127.0.0.1 should be offered. aioice has no setting for it."""

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback
