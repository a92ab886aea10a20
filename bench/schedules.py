"""Which schedule the server should run by default, decided in the browser: for each candidate
(workers, NUM_WARPS), a server of its own with that schedule and the backend chosen for it, the
page's latency test, and the warp distances that schedule serves (quality falls with distance:
`engine.evaluate`'s warp_distance table).

    python -m bench.schedules [--seconds 30] [--avatar A] --json OUT
    python -m bench.schedules --rows MEASURED.json --json OUT   # decide again from measured rows

JSON: {"cpu", "seconds", "rows": [{"workers", "num_warps", "schedule", "distances", "backend",
"fps", "mtp_ms_p50", "mtp_ms_p95", "warp_distance", "beyond_jump_limit"}], "chosen": row}.
`distances` are the ones the schedule plans (replay); live, a schedule of two or more workers
builds by need (engine.pipeline.schedule), so `warp_distance` (the mean, in frames) and
`beyond_jump_limit` (the share of frames whose controls lay past the jump limit from their cache's)
are measured by the server over the run's last frames. The chosen row is the one with the lowest
motion-to-photon p50 among those at >= MIN_FPS new pictures a second with at most MAX_BEYOND of
their frames past the jump limit; ties within TIE_MS go to the shorter warp distances (better
pictures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import browser
from bench.local_server import run_against, write_report
from engine.pipeline.schedule import Schedule

# (workers, NUM_WARPS); 0: generator only
CANDIDATES = ((1, 0), (1, 2), (1, 4), (2, 2), (2, 4), (2, 8))
MIN_FPS = 30.0  # the browser target (issue 12): a default below it is not a candidate
MAX_BEYOND = 0.05  # past the jump limit a warp no longer draws its controls (worker.JUMP_LIMIT)
TIE_MS = 3.0


def schedule_of(workers: int, num_warps: int) -> Schedule:
    """As run.py builds it from --workers and --num-warps."""
    if num_warps == 0:
        return Schedule("generator", workers)
    if workers == 1:
        return Schedule("sequential", 1, num_warps)
    return Schedule("parallel", workers, num_warps)


def measure(avatar: Path | None, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for workers, num_warps in CANDIDATES:
        args = ["--workers", str(workers), "--num-warps", str(num_warps)]
        report = run_against(
            None, avatar, lambda url, _pid: browser.measure(url, seconds, "vp8"), args
        )
        schedule = schedule_of(workers, num_warps)
        rows.append(
            {
                "workers": workers,
                "num_warps": num_warps,
                "schedule": schedule.label,
                "distances": list(schedule.distances()),
                "backend": (report.get("backend") or {}).get("label"),
                "fps": report["fps"],
                "mtp_ms_p50": report["mtp_ms_p50"],
                "mtp_ms_p95": report["mtp_ms_p95"],
                "warp_distance": report.get("warp_distance"),
                "beyond_jump_limit": report.get("beyond_jump_limit"),
            }
        )
        print(rows[-1], flush=True)
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    fast = [
        r
        for r in rows
        if r["fps"] >= MIN_FPS
        and r["mtp_ms_p50"] is not None
        and (r.get("beyond_jump_limit") or 0.0) <= MAX_BEYOND
    ]
    if not fast:
        return None
    best = min(r["mtp_ms_p50"] for r in fast)
    close = [r for r in fast if r["mtp_ms_p50"] <= best + TIE_MS]
    return min(close, key=lambda r: (_served_distance(r), r["mtp_ms_p50"]))


def _served_distance(row: dict[str, Any]) -> float:
    """How far back a row's warps reached: measured where the server said, else as planned."""
    measured = row.get("warp_distance")
    return float(measured) if measured is not None else float(max(row["distances"] or [0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.schedules", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--avatar", type=Path, help="default: the shipped avatar")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rows", type=Path, help="the rows of an earlier run: decide only")
    args = parser.parse_args(argv)
    if args.rows is not None:
        earlier = json.loads(args.rows.read_text())
        earlier["chosen"] = choose(earlier["rows"])
        write_report(args.json, earlier)
        return 0
    if browser.chromium_path() is None:
        print(
            "error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    rows = measure(args.avatar, args.seconds)
    write_report(args.json, {"seconds": args.seconds, "rows": rows, "chosen": choose(rows)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
