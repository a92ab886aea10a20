"""Put a backend choice into an avatar: build each stage's function and hand them to it."""

from __future__ import annotations

from pathlib import Path

from engine.render.avatar import Avatar
from engine.render.backends.runtimes import open_session, runtime_generator, runtime_warp
from engine.render.backends.stages import BackendChoice, GeneratorFn, StageChoice, WarpFn
from engine.render.backends.torch_stage import torch_generator, torch_warp


def generator_stage(
    avatar: Avatar, choice: StageChoice, folder: Path | None, threads: int
) -> GeneratorFn:
    device = avatar.translation.device
    if choice.runtime == "torch":
        return torch_generator(avatar.generator, choice, device)
    _check_cpu(avatar, choice)
    assert folder is not None  # BackendChoice refuses a runtime without its folder
    return runtime_generator(open_session(folder, "generator", choice, threads))


def warp_stage(avatar: Avatar, choice: StageChoice, folder: Path | None, threads: int) -> WarpFn:
    device = avatar.translation.device
    if choice.runtime == "torch":
        return torch_warp(avatar.warp_net, choice, device)
    _check_cpu(avatar, choice)
    if avatar.config.warp_kind != "implicit":
        raise ValueError(
            f"the {avatar.config.warp_kind} warp runs in torch only (its pixel motion is not "
            "part of the exported graph)"
        )
    assert folder is not None
    return runtime_warp(open_session(folder, "warp", choice, threads))


def _check_cpu(avatar: Avatar, choice: StageChoice) -> None:
    if avatar.translation.device.type != "cpu":
        raise ValueError(
            f"{choice.runtime} runs on the CPU; this avatar is on {avatar.translation.device}"
        )


def load_backend(avatar: Avatar, choice: BackendChoice, threads: int) -> Avatar:
    """`avatar` (prepared for inference) rendering through `choice`, each runtime on `threads`."""
    generator = generator_stage(avatar, choice.generator, choice.model_dir, threads)
    warp = warp_stage(avatar, choice.warp, choice.model_dir, threads)
    return avatar.use_backend(choice, generator, warp)
