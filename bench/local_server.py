"""The server a benchmark measures: the one at --url, or `run.py` started here on a free loopback port.

Every end-to-end benchmark (browser, soak, churn, fuzz) takes `--url URL`; without it the benchmark
starts a server of its own (`run.py --loopback-only`, the shipped avatar unless --avatar) and stops
it afterwards. Only an own server's pid is known, so only then is its memory measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from engine.cpu import cpu_info

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 180.0  # workers load the avatar


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalServer:
    url: str
    pid: int


@contextlib.contextmanager
def local_server(avatar: Path | None, extra: list[str] | None = None) -> Iterator[LocalServer]:
    """`run.py` on a free loopback port; yields its URL and pid once /health answers."""
    port = free_port()
    cmd = [sys.executable, "run.py", "--port", str(port), "--loopback-only", *(extra or [])]
    if avatar is not None:
        cmd += ["--avatar", str(avatar)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.2)
        yield LocalServer(url, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def server_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line every end-to-end benchmark shares: `--url` (a running server; default:
    start one), `--avatar` (for the server it starts) and `--json OUT`; the benchmark adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--avatar", type=Path, help="for the server this starts")
    parser.add_argument("--json", type=Path, required=True, help="where the report goes")
    return parser


def run_against(
    url: str | None,
    avatar: Path | None,
    measure: Callable[[str, int | None], dict[str, Any]],
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """measure(url, server pid or None) against `url`, or against an own server run with `extra`."""
    if url:
        return measure(url.rstrip("/"), None)
    with local_server(avatar, extra) as server:
        return measure(server.url, server.pid)


async def api_stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET `url`/api/stats: sessions, workers, resources, why sessions ended."""
    async with http.get(f"{url}/api/stats") as r:
        r.raise_for_status()
        result: dict[str, Any] = await r.json()
        return result


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The report as indented JSON at `path` (folders made) and on stdout, with the machine's CPU
    (machines of one kind do not all have the same one)."""
    if "cpu" not in report:
        report = report | {"cpu": cpu_info()}
    text = json.dumps(report, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)
