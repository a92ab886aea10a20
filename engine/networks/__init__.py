"""The neural renderer's networks: neural texture, generator with cache taps, warp networks."""

from engine.networks.config import PRESETS, RendererConfig, macs
from engine.networks.generator import Generator, GeneratorOutput, generator_input, make_cache
from engine.networks.inference import prepare_for_inference
from engine.networks.texture import NeuralTexture, sh_basis
from engine.networks.warp import (
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
