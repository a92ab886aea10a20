"""Sizes of the neural renderer's networks: one frozen dataclass, three presets, and their cost.

`RendererConfig` holds every size the texture, generator and warp networks are built from; it is
saved inside an avatar file (`to_dict` / `from_dict`) so that a trained avatar rebuilds the exact
networks it was trained with. `macs` counts multiply-accumulates by running the networks once on
PyTorch's meta device under `FlopCounterMode` (no memory, no arithmetic): the count follows the
code, never a hand formula that could drift from it.

Presets (figures from `python -m bench.networks_timing`, see the report in the commit that made
them; the machine matters, re-measure before relying on them):
- "paper": 512^2, sized to the paper's reported 364 G (generator) and 87 G (warp) MACs.
- "cpu": 256^2, sized so that on a 2-core AVX2 CPU (fp32, channels_last, inference mode) the
  implicit warp takes <= ~15-20 ms and the generator >= 3.3x as long.
- "tiny": 64^2, for tests: every network runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from engine.render.neural_cache import CACHE_LAYERS

WarpKind = Literal["implicit", "explicit"]
WARP_KINDS: tuple[str, ...] = ("implicit", "explicit")
CACHE_LAYER_CHOICES: tuple[tuple[str, ...], ...] = tuple(
    CACHE_LAYERS[:n] for n in range(1, len(CACHE_LAYERS) + 1)
)  # ("c3",), ("c3", "c4"), ("c3", "c4", "c5"): a layer is only cached with all coarser ones
RGB_CHANNELS = 3  # texture channels 0..2 are the RGB ones a texture loss supervises
MIN_DOWNSAMPLES = 3  # C3 sits at H/4 and is a decoder level: the encoder must reach H/8 at least
MAX_SH_DEGREE = 2  # real spherical harmonics up to degree 2 (9 basis values), as in DNR


def sh_basis_size(degree: int | None) -> int:
    """Number of real SH basis values up to `degree` ((degree + 1)^2); 0 when SH is off."""
    return 0 if degree is None else (degree + 1) ** 2


@dataclass(frozen=True)
class RendererConfig:
    """Every size of the neural texture, the generator U-Net and the warp networks.

    Output and texture:
      resolution        output height = width in pixels (square crops)
      texture_size      side of the finest texture level in texels
      texture_channels  channels of the neural texture (0..2 RGB, then SH-modulated ones, rest free)
      texture_levels    Laplacian pyramid levels; level i is texture_size / 2^i texels wide
      sh_degree         degree of the view-dependent SH modulation (None: no view dependence)
      sh_first_channel  first texture channel multiplied by the SH basis ((deg+1)^2 channels)
    Generator (a U-Net over the sampled texture plus the mask):
      generator_widths  encoder widths at H, H/2, H/4, ... (len - 1 stride-2 downsamplings)
      generator_blocks  3x3 convs per encoder/decoder level (>= 1)
      c3_channels, c4_channels, c5_channels  decoder widths at H/4, H/2, H: the cacheable features
    Warp (a small conv net at H/4 that upsamples to H, shared by both kinds):
      warp_kind         "implicit" (learns the motion from UV differences and controls) or
                        "explicit" (moves the cache along the mesh's pixel motion, then refines)
      warp_widths       trunk widths at H/4, H/2, H
      warp_blocks       3x3 convs at H/4 (>= 1)
      cache_layers      which decoder features are cached and fed to the warp
      control_dim       length of the control vector (52 expressions + yaw, pitch, roll + view
                        yaw, view pitch by default)
      control_hidden, control_embed_dim  hidden and output sizes of the control embedding MLP
    Generator conditioning:
      generator_control_dim  when > 0, the controls (expression scores and angles) are embedded to
                        this many channels and joined to the generator's deepest features, so
                        appearance the mesh cannot show (squints, tears, a frown) can follow the
                        scores; 0: the generator sees the UV map alone (DNR, the paper)
      generator_framing  when > 0, this many numbers saying where a training frame's crop sat
                        in its source frame (engine/training/framing.py) join the control
                        embedding: the body below the head (shoulders that rise into the crop when
                        the head drops) follows them. Zero when served (the training median)
      warp_framing      the warp reads the same numbers, its frame's and its cache's: the body
                        moves between the cached frame and the warped one, and the controls do not
                        say how (needs generator_framing)
      warp_flow         the implicit warp predicts a flow at H/4 (zero-initialised) and moves its
                        cached C4 and C5 along it before it reads them: unmoved, features cached
                        seven frames ago sit where that frame had them, further than a 3x3 conv
                        reaches
    """

    resolution: int = 256
    texture_size: int = 512
    texture_channels: int = 16
    texture_levels: int = 4
    sh_degree: int | None = 2
    sh_first_channel: int = RGB_CHANNELS
    generator_widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    generator_blocks: int = 2
    c3_channels: int = 64
    c4_channels: int = 32
    c5_channels: int = 16
    warp_kind: WarpKind = "implicit"
    warp_widths: tuple[int, int, int] = (64, 16, 8)
    warp_blocks: int = 3
    cache_layers: tuple[str, ...] = CACHE_LAYERS
    control_dim: int = 57
    control_hidden: int = 64
    control_embed_dim: int = 32
    generator_control_dim: int = 0
    generator_framing: int = 0
    warp_framing: bool = False
    warp_flow: bool = False

    def __post_init__(self) -> None:
        positive = {
            "resolution": self.resolution,
            "texture_size": self.texture_size,
            "texture_channels": self.texture_channels,
            "texture_levels": self.texture_levels,
            "generator_blocks": self.generator_blocks,
            "c3_channels": self.c3_channels,
            "c4_channels": self.c4_channels,
            "c5_channels": self.c5_channels,
            "warp_blocks": self.warp_blocks,
            "control_dim": self.control_dim,
            "control_hidden": self.control_hidden,
            "control_embed_dim": self.control_embed_dim,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.generator_control_dim, int) or self.generator_control_dim < 0:
            raise ValueError(
                f"generator_control_dim must be a non-negative integer, got "
                f"{self.generator_control_dim!r}"
            )
        if not isinstance(self.generator_framing, int) or self.generator_framing < 0:
            raise ValueError(
                f"generator_framing must be a non-negative integer, got {self.generator_framing!r}"
            )
        if self.generator_framing and not self.generator_control_dim:
            raise ValueError(
                "generator_framing joins the control embedding: it needs generator_control_dim > 0"
            )
        if not isinstance(self.warp_framing, bool):
            raise ValueError(f"warp_framing must be true or false, got {self.warp_framing!r}")
        if not isinstance(self.warp_flow, bool):
            raise ValueError(f"warp_flow must be true or false, got {self.warp_flow!r}")
        if self.warp_flow and self.warp_kind != "implicit":
            raise ValueError("warp_flow is the implicit warp's: the explicit one moves its cache")
        if self.warp_framing and not self.generator_framing:
            raise ValueError(
                "warp_framing reads the generator's framing: it needs generator_framing > 0"
            )
        if len(self.generator_widths) < MIN_DOWNSAMPLES + 1:
            raise ValueError(
                f"generator_widths needs at least {MIN_DOWNSAMPLES + 1} levels (H .. H/8) so "
                f"that C3 at H/4 is a decoder level, got {self.generator_widths}"
            )
        if any(not isinstance(w, int) or w <= 0 for w in self.generator_widths):
            raise ValueError(f"generator_widths must be positive integers: {self.generator_widths}")
        if len(self.warp_widths) != 3 or any(
            not isinstance(w, int) or w <= 0 for w in self.warp_widths
        ):
            raise ValueError(
                f"warp_widths must be 3 positive integers (H/4, H/2, H), got {self.warp_widths}"
            )
        deepest = 2 ** (len(self.generator_widths) - 1)
        if self.resolution % deepest:
            raise ValueError(
                f"resolution {self.resolution} must be divisible by {deepest}: the generator "
                f"downsamples {len(self.generator_widths) - 1} times"
            )
        coarsest = 2 ** (self.texture_levels - 1)
        if self.texture_size % coarsest:
            raise ValueError(
                f"texture_size {self.texture_size} must be divisible by {coarsest} "
                f"for {self.texture_levels} pyramid levels"
            )
        if self.sh_degree is not None and not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be None or 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        if self.sh_degree is not None:
            end = self.sh_first_channel + sh_basis_size(self.sh_degree)
            if self.sh_first_channel < RGB_CHANNELS or end > self.texture_channels:
                raise ValueError(
                    f"SH channels {self.sh_first_channel}..{end - 1} must lie after the RGB "
                    f"channels 0..{RGB_CHANNELS - 1} and inside the {self.texture_channels} "
                    "texture channels"
                )
        elif self.texture_channels < RGB_CHANNELS:
            raise ValueError(f"texture_channels must be >= {RGB_CHANNELS} (RGB)")
        if self.warp_kind not in WARP_KINDS:
            raise ValueError(f"warp_kind must be one of {WARP_KINDS}, got {self.warp_kind!r}")
        if tuple(self.cache_layers) not in CACHE_LAYER_CHOICES:
            raise ValueError(
                f"cache_layers must be one of {CACHE_LAYER_CHOICES}, got {self.cache_layers!r}"
            )

    @property
    def generator_in_channels(self) -> int:
        """Channels the generator reads: the sampled texture plus the coverage mask."""
        return self.texture_channels + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RendererConfig:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are an error."""
        known = {f.name for f in fields(RendererConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown renderer config keys: {sorted(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return RendererConfig(**values)


PRESETS: dict[str, RendererConfig] = {
    # The paper's scale: 512^2; MACs within a few % of its 364 G / 87 G (see `macs`).
    "paper": RendererConfig(
        resolution=512,
        texture_size=1024,
        texture_levels=4,
        generator_widths=(96, 192, 352, 512, 512),
        generator_blocks=2,
        c3_channels=320,
        c4_channels=192,
        c5_channels=96,
        warp_widths=(256, 64, 32),
        warp_blocks=8,
    ),
    # Live on a 2-core CPU at 256^2 (timings in the module docstring's bench).
    "cpu": RendererConfig(
        resolution=256,
        # The face spans ~100-130 px of a 256^2 crop, so 256 texels already exceed the pixels that
        # supervise them; 512 would quadruple the file (22 MB of texture alone) for no detail.
        texture_size=256,
        generator_widths=(16, 32, 64, 128, 256),
        generator_blocks=2,
        c3_channels=64,
        c4_channels=32,
        c5_channels=8,
        warp_widths=(64, 16, 8),
        warp_blocks=3,
    ),
    # Tests: milliseconds per pass.
    "tiny": RendererConfig(
        resolution=64,
        texture_size=64,
        texture_levels=3,
        generator_widths=(8, 16, 16, 32),
        generator_blocks=1,
        c3_channels=16,
        c4_channels=8,
        c5_channels=4,
        warp_widths=(16, 8, 4),
        warp_blocks=1,
        control_hidden=16,
        control_embed_dim=8,
    ),
}
