"""What this CPU is: its model and the instruction-set flags that decide precision.

Machines of one kind do not all have the same CPU (one had AVX2 only, another AVX-512 with VNNI
and BF16), so precision is chosen at run time from these flags and every benchmark records them.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

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
