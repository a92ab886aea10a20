"""What this CPU is: its model and the instruction-set flags that decide precision; and how busy
the rest of the machine kept it while something was timed (`OtherLoad`).

Machines of one kind do not all have the same CPU (one had AVX2 only, another AVX-512 with VNNI
and BF16), so precision is chosen at run time from these flags and every benchmark records them.
"""

from __future__ import annotations

import platform
import time
from functools import cache
from pathlib import Path

import psutil

CPUINFO = Path("/proc/cpuinfo")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


@cache
def cpu_info() -> dict[str, object]:
    """{"model": str, "flags": {flag: bool for FLAGS}}; flags all False where /proc/cpuinfo is
    not readable (not Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return {"model": model, "flags": {name: name in flags for name in FLAGS}}


def has_native_bf16() -> bool:
    """True where bfloat16 math runs in hardware (AVX-512 BF16 or AMX)."""
    flags = cpu_info()["flags"]
    assert isinstance(flags, dict)
    return bool(flags["avx512_bf16"] or flags["amx_bf16"])


class OtherLoad:
    """How many cores other processes kept busy between `start()` and `cores()`: the system's
    busy CPU time (psutil) less this process's own, over the wall time. Timings taken while it is
    high (a training run beside the server) say little about the machine at rest."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._wall, self._busy, self._own = time.monotonic(), self._system_busy(), self._own_time()

    @staticmethod
    def _system_busy() -> float:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return float(sum(times) - idle)

    def _own_time(self) -> float:
        t = self._me.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    def cores(self) -> float:
        """Cores' worth of CPU time the rest of the machine used since this object was made."""
        wall = max(time.monotonic() - self._wall, 1e-6)
        others = (self._system_busy() - self._busy) - (self._own_time() - self._own)
        return round(max(others, 0.0) / wall, 2)
