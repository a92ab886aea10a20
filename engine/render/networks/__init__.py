"""The neural renderer's networks: neural texture, generator with cache taps, warp networks."""

from engine.render.networks.config import PRESETS, RendererConfig
from engine.render.networks.generator import Generator, GeneratorOutput, generator_input, make_cache
from engine.render.networks.inference import prepare_for_inference
from engine.render.networks.macs import macs
from engine.render.networks.texture import NeuralTexture, sh_basis
from engine.render.networks.warp import (
    ControlEmbedding,
    ExplicitWarp,
    ImplicitWarp,
    WarpOutput,
    WarpTrunk,
    identity_motion,
    make_warp,
    pool_motion,
    warp_features,
)

__all__ = [
    "PRESETS",
    "ControlEmbedding",
    "ExplicitWarp",
    "Generator",
    "GeneratorOutput",
    "ImplicitWarp",
    "NeuralTexture",
    "RendererConfig",
    "WarpOutput",
    "WarpTrunk",
    "generator_input",
    "identity_motion",
    "macs",
    "make_cache",
    "make_warp",
    "pool_motion",
    "prepare_for_inference",
    "sh_basis",
    "warp_features",
]
