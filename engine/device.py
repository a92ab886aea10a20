"""Device selection shared by every engine entry point (`--device auto|cpu|cuda|cuda:N`)."""

from __future__ import annotations

import torch

DEVICE_CHOICES_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a `--device` value into a torch.device, failing clearly on an impossible request."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: expected {DEVICE_CHOICES_HELP}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: expected {DEVICE_CHOICES_HELP}")
    return device
