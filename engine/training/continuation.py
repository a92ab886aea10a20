"""Continuing a training run: its checkpoint (`--resume`: weights, optimiser, random streams,
steps, minutes), or a finished avatar file (`--init`: weights, steps, minutes, history and stages,
with a fresh optimiser), each checked against the run's settings (engine/training/settings.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from engine.render.avatar import Avatar
from engine.training.adversarial import Critic
from engine.training.settings import EXTENSIONS, LOSS_KEYS, MODEL_KEYS, RESUME_KEYS, TrainSettings
from engine.training.split import Split


def save_checkpoint(
    path: Path,
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    step: int,
    elapsed: float,
    history: list[dict[str, float]],
    settings: TrainSettings,
    critic: Critic | None = None,
    stages: list[dict[str, Any]] | None = None,
) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "step": step,
            "elapsed": elapsed,
            "history": history,
            "settings": json.dumps(settings.to_dict()),
            "model": avatar.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"critic": critic.state_dict()} if critic is not None else {}),
            "stages": json.dumps(stages or []),
        },
        tmp,
    )
    os.replace(tmp, path)


def stage_record(settings: dict[str, Any], steps: int, elapsed_s: float) -> dict[str, Any]:
    """One run's record in `stages`: where it ended and the losses it used."""
    return {"steps": steps, "minutes": round(elapsed_s / 60.0, 2)} | {
        k: settings.get(k) for k in LOSS_KEYS
    }


FRAMING_WEIGHTS = ("generator.framing_embedding.weight", "warp_net.trunk.embedding.framing.weight")
# What `warp_flow` adds: it starts at zero (no flow) when turned on over a finished avatar.
FLOW_WEIGHTS = ("warp_net.trunk.flow.weight", "warp_net.trunk.flow.bias")


def extend_framing(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A finished avatar's weights with its framing embeddings widened to `target`'s: the numbers
    it did not read (the mirror mark, the body) get zero weights, so it makes the pictures it
    made. The warp reads [framing, framing - cached framing]: each half widens on its own."""
    out = dict(state)
    for key in FRAMING_WEIGHTS:
        if key not in state or key not in target or state[key].shape == target[key].shape:
            continue
        old, new = state[key], target[key]
        if old.shape[0] != new.shape[0] or old.shape[1] > new.shape[1]:
            continue  # load_state_dict names the mismatch
        halves = 2 if key.startswith("warp_net.") else 1
        was, now = old.shape[1] // halves, new.shape[1] // halves
        wider = torch.zeros_like(new)
        for half in range(halves):
            wider[:, half * now : half * now + was] = old[:, half * was : (half + 1) * was]
        out[key] = wider
    return out


def load_avatar(
    path: Path, avatar: Avatar, settings: TrainSettings, split: Split
) -> tuple[int, float, list[dict[str, float]], list[dict[str, Any]]]:
    """Weights, steps, minutes, history and stages of a finished avatar file, checked to match
    (its model settings; its loss weights may differ)."""
    done = Avatar.load(path)
    summary = done.summary
    saved = summary.get("settings", {})
    mine = settings.to_dict()
    defaults = TrainSettings.__dataclass_fields__
    differs = sorted(
        k
        for k in MODEL_KEYS
        if saved.get(k, getattr(defaults[k], "default", None)) != mine[k]
        and EXTENSIONS.get(k) != (saved.get(k, False), mine[k])
    )
    if differs:
        raise ValueError(f"--init: {path} was trained with other settings: {differs}")
    if (summary.get("split") or {}).get("digest") != split.digest():
        raise ValueError(f"--init: {path} was trained on another capture or split")
    state = extend_framing(done.state_dict(), avatar.state_dict())
    missing, unexpected = avatar.load_state_dict(state, strict=False)
    added = [k for k in missing if k not in FRAMING_WEIGHTS + FLOW_WEIGHTS]
    if added or unexpected:
        raise ValueError(f"--init: {path} does not fit: missing {added}, unexpected {unexpected}")
    steps, elapsed = int(summary["steps"]), float(summary["minutes"]) * 60.0
    stages = summary.get("stages") or [stage_record(saved, steps, elapsed)]
    return steps, elapsed, list(summary["history"]), list(stages)


def load_checkpoint(
    path: Path,
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    settings: TrainSettings,
    critic: Critic | None = None,
) -> tuple[int, float, list[dict[str, float]], list[dict[str, Any]]]:
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(ckpt["settings"])
    mine = settings.to_dict()
    defaults = TrainSettings.__dataclass_fields__
    differs = {
        k for k in RESUME_KEYS if saved.get(k, getattr(defaults[k], "default", None)) != mine[k]
    }
    if differs:
        raise ValueError(
            f"--resume: checkpoint {path} was made with other settings: {sorted(differs)}"
        )
    avatar.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.set_state(ckpt["rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    if critic is not None:
        critic.load_state_dict(ckpt["critic"])
    stages = json.loads(ckpt.get("stages", "[]"))
    return int(ckpt["step"]), float(ckpt["elapsed"]), list(ckpt["history"]), stages
