"""One trained avatar: head model, neural texture, generator, warp network, background, camera.

    full frame:  controls -> FrameInputs -> texture -> generator -> image, and a NeuralCache
    warped frame: NeuralCache + new FrameInputs -> warp network -> image

The avatar file holds everything needed to render (no other file is read): the renderer config,
the head model's arrays and expression names, the camera and head placement, the weights and the
training summary. It is loaded with `torch.load(weights_only=True)`, so a file cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.camera import Camera
from engine.controls import (
    EXPRESSION_RANGE,
    Controls,
    hold_expression,
    hold_in_range,
    neutral,
    to_head_controls,
    update,
    view_range,
)
from engine.head.data import HeadModelData
from engine.head.model import HeadModel
from engine.render.backends.reference import ReferenceFrames
from engine.render.backends.stages import FP32, BackendChoice, GeneratorFn, WarpFn
from engine.render.frame import to_image
from engine.render.frame_inputs import (
    NUM_ANGLES,
    FrameInputs,
    angles_from_rotation,
    facing_rotation,
    make_inputs,
)
from engine.render.networks import (
    Generator,
    NeuralTexture,
    RendererConfig,
    make_warp,
    prepare_for_inference,
)
from engine.render.networks.generator import GeneratorOutput, generator_input, make_cache
from engine.render.networks.warp import WarpOutput
from engine.render.neural_cache import NeuralCache
from engine.render.raster import PixelMotion, pixel_motion
from engine.render.response import Response

DEFAULT_AVATAR = Path(__file__).resolve().parents[2] / "static" / "default_avatar.pt"
AVATAR_FORMAT = "neural-avatar"
AVATAR_VERSION = 1
BACKGROUND_INIT = 0.5  # grey, until training learns the real one


def draw_controls(
    controls: Controls,
    names: Sequence[str],
    response: Response | None,
    held: Mapping[str, float],
    pose_range: Mapping[str, Sequence[float]] | None,
) -> Controls:
    """Sent controls as an avatar draws them: expression scores through its measured `response`,
    then held within its expression limits `held`, the head held within `pose_range`."""
    if response is not None:
        controls = response.apply(controls, names)
    if held:
        controls = hold_expression(controls, names, held)
    if pose_range is not None:
        controls = hold_in_range(controls, pose_range)
    return controls


@dataclass(frozen=True)
class Rendered:
    """image (B, 3, H, W) in [0, 1] composited over the background; alpha (B, 1, H, W)."""

    image: torch.Tensor
    alpha: torch.Tensor


POSE_FRAMES = ("viewer", "camera")


class Avatar(nn.Module):
    """A renderer for one person. One instance per device, shared by every session on it."""

    def __init__(
        self,
        config: RendererConfig,
        head_data: HeadModelData,
        camera: Camera,
        translation: torch.Tensor,
        summary: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.camera = camera
        self.summary: dict[str, Any] = dict(summary or {})
        self.head = HeadModel(head_data)
        self.texture = NeuralTexture(config)
        self.generator = Generator(config)
        self.warp_net = make_warp(config)
        r = config.resolution
        self.background = nn.Parameter(torch.full((1, 3, r, r), BACKGROUND_INIT))
        self.register_buffer("translation", translation.detach().float().reshape(3).clone())
        self.memory_format = torch.contiguous_format
        self.inference_only = False
        # Frames of its own capture: int8 calibration and the backends' quality gate.
        self.reference: ReferenceFrames | None = None
        self.run_generator: GeneratorFn = self._torch_generator
        self.run_warp = WarpFn(self._torch_warp)
        self.backend = FP32
        self._facing: torch.Tensor | None = None  # `facing`'s rotation, once asked for
        self._response: tuple[object, Response] | None = None  # `response`, parsed once
        self._limits: tuple[object, dict[str, float]] | None = None  # `expression_limits`, too

    translation: torch.Tensor

    def serve_framing(self) -> None:
        """Served frames read the framing their controls predict, where the summary's `body`
        holds a fit of the body's numbers to the pose (engine/training/body.py); otherwise 0, the
        training median."""
        served = (self.summary.get("body") or {}).get("served")
        width = self.config.generator_framing
        matrix = None
        if served is not None and width:
            matrix = served_framing_matrix(served, width, self.config.control_dim)
            matrix = matrix.to(self.translation.device)
        self.generator.served_framing = matrix
        self.warp_net.trunk.embedding.served_framing = matrix  # the warp reads the same body

    def _torch_generator(
        self, x: torch.Tensor, controls: torch.Tensor, framing: torch.Tensor | None = None
    ) -> GeneratorOutput:
        out: GeneratorOutput = self.generator(x, controls, framing)
        return out

    def _torch_warp(
        self,
        cache: NeuralCache,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
        motion: PixelMotion | None,
        framing: torch.Tensor | None = None,
    ) -> WarpOutput:
        out: WarpOutput = self.warp_net(cache, uv, mask, controls, motion, framing)
        return out

    def use_backend(self, choice: BackendChoice, generator: GeneratorFn, warp: WarpFn) -> Avatar:
        """Run the two networks through `generator` and `warp` (engine.render.backends), the rest
        (texture, rasterising, compositing) as before. Inference only."""
        if not self.inference_only:
            raise ValueError("prepare the avatar for inference before giving it a backend")
        self.backend, self.run_generator, self.run_warp = choice, generator, warp
        if choice.texture == "collapsed":
            self.texture = self.texture.collapsed()
        if choice.generator.runtime != "torch":  # the runtimes read NCHW: one copy fewer
            self.memory_format = torch.contiguous_format
        return self

    def prepare_for_inference(self) -> Avatar:
        """Eval mode, BatchNorms folded into their convs, channels_last: how the live renderer runs
        (see `engine.render.networks.inference`). The avatar can then neither train nor be saved."""
        self.eval()
        for net in (self.generator, self.warp_net):
            prepare_for_inference(net, self.translation.device, channels_last=True)
        self.memory_format = torch.channels_last
        self.inference_only = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def use_channels_last(self, enabled: bool = True) -> Avatar:
        """Store the conv networks' weights (and feed them activations) as channels_last.

        oneDNN's CPU convs work in NHWC; NCHW tensors are reordered around every conv. Measured on
        the 2-core CPU at 256^2: inference 1.3-1.5x faster, a training step ~1.3x faster.
        """
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        for net in (self.generator, self.warp_net):
            # nn.Module.to accepts memory_format at run time; its type stubs do not list it.
            net.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        return self

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def expression_names(self) -> tuple[str, ...]:
        return self.head.expression_names

    # ---------------------------------------------------------------------------- rendering

    @property
    def pose_range_deg(self) -> dict[str, list[float]] | None:
        """The head poses this avatar can render ({"yaw", "pitch", "roll": [lo, hi]} degrees):
        those of its training frames and a margin (`engine.controls.pose_range`); None when its
        file does not say (then any pose the protocol allows is rendered)."""
        value = self.summary.get("pose_range_deg")
        return value if isinstance(value, dict) else None

    @property
    def rest_expression(self) -> dict[str, float]:
        """The expression a session starts from ({name: weight}, the names left out at 0): the
        median of its training frames (`engine.controls.rest_expression`); empty when not known."""
        value = self.summary.get("rest_expression")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def expression_limits(self) -> dict[str, float]:
        """The largest weight each expression is drawn at ({name: weight}, names left out not
        held): those of its training frames and a margin (`engine.controls.expression_limits`);
        empty when its file does not say."""
        value = self.summary.get("expression_limits")
        if value is None:
            return {}
        if self._limits is None or self._limits[0] is not value:
            self._limits = (value, self._checked_limits(value))
        return self._limits[1]

    def _checked_limits(self, value: object) -> dict[str, float]:
        """A file's expression_limits, checked once (served frames read them every frame)."""
        if not isinstance(value, dict):
            raise ValueError(f"expression_limits must be {{name: weight}}, got {value!r}")
        known = set(self.expression_names)
        lo, hi = EXPRESSION_RANGE
        for name, weight in value.items():
            if name not in known:
                raise ValueError(f"expression_limits names {name!r}, not one of its expressions")
            if not isinstance(weight, (int, float)) or not lo < float(weight) <= hi:
                raise ValueError(f"expression_limits[{name!r}] = {weight!r}, not in ({lo}, {hi}]")
        return {str(k): float(v) for k, v in value.items()}

    @property
    def rest(self) -> Controls:
        """Controls at rest: `rest_expression`, head and view straight ahead."""
        names = self.expression_names
        return update(neutral(names), names, expression=self.rest_expression)

    @property
    def source(self) -> dict[str, object] | None:
        """Where the avatar's face came from: {"clip", "frames", "licence"} (the capture's video,
        the frames it was trained on, its terms); None when its file does not say."""
        value = self.summary.get("source")
        if not isinstance(value, dict):
            return None
        return {
            "clip": value.get("video"),
            "frames": self.summary.get("frames"),
            "licence": value.get("licence", "not stated"),
        }

    @property
    def view_range_deg(self) -> dict[str, list[float]] | None:
        """The view orbits ({"yaw", "pitch": [lo, hi]} degrees) that keep the unturned head within
        `pose_range_deg`; None when that is not known."""
        limits = self.pose_range_deg
        return None if limits is None else view_range(limits)

    @property
    def response(self) -> Response | None:
        """The measured response of its jaw, smile and blink (engine/render/response.py), which
        served scores are mapped through so that the score sent is the score seen; None when
        its file has none (scores drawn as sent)."""
        value = self.summary.get("response")
        if value is None:
            return None
        if self._response is None or self._response[0] is not value:
            self._response = (value, Response.from_dict(value))
        return self._response[1]

    @property
    def pose_frame(self) -> str:
        """What a pose's zero means: "viewer" (the head looks at the camera, as a webcam user
        who looks at theirs sends) or "camera" (the head looks down the camera's axis: avatars
        trained before poses were the viewer's). Its file says which; `pose_range_deg` is in it."""
        value = self.summary.get("pose_frame", "camera")
        if value not in POSE_FRAMES:
            raise ValueError(f"pose_frame must be one of {POSE_FRAMES}, got {value!r}")
        return str(value)

    def facing(self) -> torch.Tensor | None:
        """(3, 3) the world rotation of a head at this avatar's place that looks at the camera,
        or None when poses are the camera's (`pose_frame`)."""
        if self.pose_frame != "viewer":
            return None
        # Constant for the avatar: made once (per device), not on every served frame.
        if self._facing is None or self._facing.device != self.translation.device:
            self._facing = facing_rotation(
                self.head.template_centre + self.translation, self.camera
            )
        return self._facing

    def drawing(self) -> Callable[[Controls], Controls]:
        """Sent controls -> the controls its networks draw (`draw_controls` with this avatar's
        response and limits): small and picklable, so a process that drops the model (the
        pipeline's dispatcher) can still tell whether two controls make different pictures."""
        return partial(
            draw_controls,
            names=tuple(self.expression_names),
            response=self.response,
            held=self.expression_limits,
            pose_range=self.pose_range_deg,
        )

    def inputs(self, controls: Sequence[Controls]) -> FrameInputs:
        """Live controls -> renderer inputs (the head sits at the capture's median place). The
        head, turned by its pose and the view orbit, is held within `pose_range_deg`: past it the
        picture would come apart. Poses are the viewer's where the avatar says so (`pose_frame`):
        turned to the camera first; the networks read the world's angles they learned from.
        Expression scores are drawn through the avatar's measured `response`, then held within
        its `expression_limits` (past them its mouth comes apart)."""
        drawing = self.drawing()
        controls = [drawing(c) for c in controls]
        head_controls, view = to_head_controls(controls, self.head, self.translation)
        angles = torch.tensor(
            [(c.yaw, c.pitch, c.roll, c.view_yaw, c.view_pitch) for c in controls],
            device=self.translation.device,
        )
        facing = self.facing()
        if facing is not None:
            world = facing @ head_controls.rotation  # (B, 3, 3)
            head_controls = replace(head_controls, rotation=world)
            view = facing @ view @ facing.T  # the orbit about the viewer's axes, in the world's
            angles = torch.cat((angles_from_rotation(world)[:, :3], angles[:, 3:]), dim=1)
        return make_inputs(self.head, head_controls, view, angles, self.camera, self.resolution)

    def composite(
        self, rgb: torch.Tensor, alpha: torch.Tensor, mirrored: torch.Tensor | None = None
    ) -> Rendered:
        """Over the background; flipped left to right for the frames `mirrored` (B,) (training)."""
        background: torch.Tensor = self.background
        if mirrored is not None:
            flipped = mirrored[:, None, None, None]
            background = torch.where(flipped, background.flip(-1), background)  # (B, 3, H, W)
        image = alpha * rgb + (1.0 - alpha) * background  # (B, 3, H, W)
        return Rendered(image=image, alpha=alpha)

    def generate(self, x: FrameInputs, prepare: bool = True) -> tuple[Rendered, NeuralCache]:
        """The expensive path: a full generator pass, and the cache it leaves (served: prepared for
        the warps it will serve unless `prepare` is False, for a caller that prepares it later,
        off the frame's path, with `prepared`)."""
        features = self.texture(x.uv, x.mask, x.view_dir)  # (B, C, H, W)
        x_in = generator_input(features, x.mask).contiguous(memory_format=self.memory_format)
        if x.framing is not None and self.config.generator_framing:
            # A captured frame's framing (training, evaluation): torch reads it; the served
            # path, whatever its backend, renders at the training median.
            out = self._torch_generator(x_in, x.controls, x.framing)
        else:
            out = self.run_generator(x_in, x.controls)  # (B, C + 1, H, W) -> GeneratorOutput
        return self.composite(out.rgb, out.alpha, x.mirrored), self.cache_of(out, x, prepare)

    def cache_of(self, out: GeneratorOutput, x: FrameInputs, prepare: bool = True) -> NeuralCache:
        """The neural cache a generator pass on `x` leaves; served (inference), prepared by the
        warp stage once for the frames it will serve (`WarpFn.prepare`) unless `prepare` is
        False."""
        framing = x.framing if self.config.warp_framing else None
        cache = make_cache(
            out,
            self.config.cache_layers,
            x.uv,
            x.mask,
            x.controls,
            x.screen,
            self.cache_blocks,
            framing,
        )
        return self.prepared(cache) if prepare else cache

    def prepared(self, cache: NeuralCache) -> NeuralCache:
        """`cache` readied for the warps it will serve (served caches only: in training a cache
        serves one warp and its gradients)."""
        return self.run_warp.prepare(cache) if self.inference_only else cache

    @property
    def cache_blocks(self) -> bool:
        """Whether served caches carry their block means (`NeuralCache.blocks`): where the
        implicit warp runs in torch (the exported warps take the maps and pool them in-graph),
        for inference (in training a cache serves one warp)."""
        return (
            self.inference_only
            and self.config.warp_kind == "implicit"
            and self.backend.warp.runtime == "torch"
        )

    def warp(self, cache: NeuralCache, x: FrameInputs) -> Rendered:
        """The cheap path: a new frame from a cache and the new frame's inputs."""
        motion = None
        if self.config.warp_kind == "explicit":
            motion = pixel_motion(
                x.fragments, cache.screen, self.head.faces, self.resolution, self.resolution
            )
        if x.framing is not None and cache.framing is not None:
            # Captured frames (training, evaluation): torch reads their framing, as the
            # generator's; served frames make it from the controls whatever the backend.
            out = self._torch_warp(cache, x.uv, x.mask, x.controls, motion, x.framing)
        else:
            out = self.run_warp(cache, x.uv, x.mask, x.controls, motion)
        return self.composite(out.rgb, out.alpha, x.mirrored)

    @torch.inference_mode()
    def render(self, controls: Controls) -> np.ndarray:
        """One full (generator) frame of `controls` -> (H, W, 3) uint8 picture."""
        rendered, _ = self.generate(self.inputs([controls]), prepare=False)  # no warp follows
        return to_image(rendered.image)

    def texture_rgb(self, x: FrameInputs) -> torch.Tensor:
        """(B, 3, H, W) the texture's RGB channels at the UV map (supervised as colour)."""
        return self.texture.rgb(x.uv, x.mask)

    # ---------------------------------------------------------------------------- file

    def save(self, path: Path) -> None:
        """Write the avatar file atomically (a failed write leaves any old file intact)."""
        if self.inference_only:
            raise ValueError("an avatar prepared for inference has no BatchNorms left to save")
        head = self.head.data
        payload = {
            "format": AVATAR_FORMAT,
            "version": AVATAR_VERSION,
            "config": self.config.to_dict(),
            "camera": self.camera.to_dict(),
            "head": _head_to_payload(head),
            "state": {
                k: v.detach().cpu()
                for k, v in self.state_dict().items()
                if not k.startswith("head.")
            },
            "summary": self.summary,
        }
        if self.reference is not None:
            payload["reference"] = self.reference.to_payload()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt.tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def load(path: Path, device: torch.device | str = "cpu") -> Avatar:
        """Read an avatar file; a file that is not one, or of another version, fails clearly."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"avatar file not found: {path}") from exc
        except Exception as exc:  # torch raises many kinds for a foreign file
            raise ValueError(f"{path} is not an avatar file: {type(exc).__name__}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != AVATAR_FORMAT:
            raise ValueError(f"{path} is not an avatar file (no '{AVATAR_FORMAT}' header)")
        if payload.get("version") != AVATAR_VERSION:
            raise ValueError(
                f"{path} is avatar format version {payload.get('version')}, this build reads "
                f"version {AVATAR_VERSION}: re-train or convert it"
            )
        try:
            config = RendererConfig.from_dict(payload["config"])
            head = _head_from_payload(payload["head"])
            camera = Camera.from_dict(payload["camera"])
            avatar = Avatar(
                config, head, camera, payload["state"]["translation"], payload.get("summary")
            )
            missing, unexpected = avatar.load_state_dict(payload["state"], strict=False)
            avatar.serve_framing()
            if "reference" in payload:
                avatar.reference = ReferenceFrames.from_payload(payload["reference"])
            _ = avatar.rest  # bad names or weights in its rest fail here, not in every session
            _ = avatar.response
            _ = avatar.expression_limits
            _ = avatar.pose_frame
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path} is a damaged avatar file: {exc}") from exc
        missing = [k for k in missing if not k.startswith("head.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match its config: missing {missing}, unexpected {unexpected}"
            )
        return avatar.to(device).eval()


@contextmanager
def summary_as(avatar: Avatar, key: str, value: Any) -> Iterator[None]:
    """Within the block the avatar's summary holds `value` at `key` (None: no entry), whatever
    its file holds; after it, its own again."""
    saved = avatar.summary.pop(key, None)
    try:
        if value is not None:
            avatar.summary[key] = value
        yield
    finally:
        avatar.summary.pop(key, None)
        if saved is not None:
            avatar.summary[key] = saved


def served_framing_matrix(served: Any, width: int, control_dim: int) -> torch.Tensor:
    """(width, control_dim + 1) framing from controls: the body's numbers (the framing's last
    rows) as `served` {'weights': (K, 5), 'bias': (K,)} makes them from the control vector's
    five angles (its last entries); every other number 0."""
    try:
        weights = torch.tensor(served["weights"], dtype=torch.float32)
        bias = torch.tensor(served["bias"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"summary body.served must be {{'weights', 'bias'}}: {exc}") from exc
    k = bias.shape[0] if bias.ndim == 1 else -1
    if weights.shape != (k, NUM_ANGLES) or not 0 < k <= width:
        raise ValueError(
            f"summary body.served needs (K, {NUM_ANGLES}) weights and (K,) bias, K <= {width}: "
            f"got {tuple(weights.shape)} and {tuple(bias.shape)}"
        )
    out = torch.zeros(width, control_dim + 1)
    out[width - k :, control_dim - NUM_ANGLES : control_dim] = weights
    out[width - k :, control_dim] = bias
    return out


def _head_to_payload(d: HeadModelData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(d):
        value = getattr(d, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _head_from_payload(p: dict[str, Any]) -> HeadModelData:
    kwargs: dict[str, Any] = {}
    for f in fields(HeadModelData):
        value = p.get(f.name)
        if isinstance(value, torch.Tensor):
            kwargs[f.name] = value.numpy()
        elif isinstance(value, list):
            kwargs[f.name] = tuple(value)
        else:
            kwargs[f.name] = value
    return HeadModelData(**kwargs)
