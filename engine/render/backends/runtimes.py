"""The stages in a CPU inference runtime: ONNX Runtime or OpenVINO, reading the exported graphs.

Measured on the 2-core AVX-512 BF16 machine (MEASURED.md, and `bench.engine` with the shipped
avatar): OpenVINO's bf16 hint halves the generator (~43 -> ~21 ms) and its int8 kernels run the
quantized warp in ~6 ms; ONNX Runtime's fp32 is about torch's. Which of them a machine gets is
decided by `engine.render.backends.select`, by timing them there.

- onnxruntime: fp32 (`generator.onnx`), int8 (`generator.int8.onnx`, QDQ from `quantize.py`).
- openvino: fp32 and bf16 (the fp32 graph with an inference-precision hint; bf16 only where the
  CPU has it natively), int8 (the QDQ graph; layers it leaves unquantized run in fp32).

Threads: each worker process runs one stage at a time on `threads` cores; OpenVINO's pinning of
threads to cores is turned off because several workers share the machine's cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.cpu import has_native_bf16
from engine.render.backends.graphs import (
    GENERATOR_FILE,
    GENERATOR_INPUTS,
    GENERATOR_OUTPUTS,
    WARP_FILE,
    WARP_INPUTS,
    WARP_OUTPUTS,
)
from engine.render.backends.stages import GeneratorFn, StageChoice, WarpFn
from engine.render.networks.generator import GeneratorOutput
from engine.render.networks.warp import WarpOutput
from engine.render.neural_cache import NeuralCache
from engine.render.raster import PixelMotion

INT8_SUFFIX = ".int8.onnx"
PRECISIONS_OF = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def model_file(folder: Path, stage: str, precision: str) -> Path:
    """The graph a stage at `precision` reads: the fp32 export, or its int8 quantization."""
    base = GENERATOR_FILE if stage == "generator" else WARP_FILE
    if precision == "int8":
        return folder / base.replace(".onnx", INT8_SUFFIX)
    return folder / base


def runtime_available(runtime: str) -> str | None:
    """None if `runtime` can be imported here, else the reason it cannot."""
    try:
        if runtime == "onnxruntime":
            import onnxruntime  # noqa: F401
        elif runtime == "openvino":
            import openvino  # noqa: F401
        else:
            return f"{runtime} is not a CPU inference runtime"
    except ImportError as exc:
        return f"{runtime} is not installed ({exc})"
    return None


def check_choice(choice: StageChoice) -> None:
    """Fail, naming why, where `choice` cannot run in its runtime on this machine."""
    offered = PRECISIONS_OF.get(choice.runtime)
    if offered is None:
        raise ValueError(f"{choice.runtime} is not a CPU inference runtime")
    if choice.precision not in offered:
        raise ValueError(f"{choice.runtime} runs {' and '.join(offered)}, not {choice.precision}")
    if choice.precision == "bf16" and not has_native_bf16():
        raise ValueError(
            "bf16 needs a CPU with native bf16 (avx512_bf16 or amx_bf16); this one would emulate "
            "it many times slower than fp32"
        )
    reason = runtime_available(choice.runtime)
    if reason is not None:
        raise ValueError(reason)


@dataclass
class Session:
    """One compiled graph: `run(feeds)` -> outputs by name (fresh arrays: callers may keep them).

    ONNX Runtime runs the exported graph's free batch dimension as it is. OpenVINO plans for a
    fixed shape (faster: below), so `compile_batch` (set for OpenVINO) compiles the graph for
    another batch the first time one arrives, and keeps it: a worker warping several sessions'
    frames in one call (engine/pipeline/worker.py) pays one compilation per batch size, once.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # in the compiled graph's order (looked up once, not every frame)
    runner: Any
    kind: str
    compile_batch: Any = None  # OpenVINO: batch -> an infer request for that batch
    _by_batch: dict[int, Any] = field(default_factory=dict)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: feeds[name] for name in self.inputs}
        if self.kind == "onnxruntime":
            return dict(zip(self.outputs, self.runner.run(None, used), strict=True))
        runner = self._runner(int(used[self.inputs[0]].shape[0]))
        # Inputs are read in place (nothing changes them meanwhile); outputs are copied, since
        # callers keep them (a cache) past the next call.
        result = runner.infer(used, share_inputs=True, share_outputs=False)
        return dict(zip(self.outputs, map(np.asarray, result.to_tuple()), strict=True))

    def _runner(self, batch: int) -> Any:
        if batch == 1 or self.compile_batch is None:
            return self.runner
        if batch not in self._by_batch:
            self._by_batch[batch] = self.compile_batch(batch)
        return self._by_batch[batch]


def open_session(folder: Path, stage: str, choice: StageChoice, threads: int) -> Session:
    """Compile the stage's graph for `choice` with `threads` threads."""
    check_choice(choice)
    path = model_file(folder, stage, choice.precision)
    if not path.exists():
        raise FileNotFoundError(f"no {choice.precision} model of the {stage} at {path}")
    if choice.runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = tuple(i.name for i in session.get_inputs())
        outputs = tuple(o.name for o in session.get_outputs())
        return Session(inputs, outputs, session, "onnxruntime")
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if choice.precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    }
    core = ov.Core()

    def compile_batch(batch: int) -> Any:
        # A fixed batch: planned for that shape, OpenVINO ran the warp in 7.9 ms against 10.0 ms
        # with the exported free batch dimension (bf16, 2 threads).
        model = core.read_model(str(path))
        model.reshape({port.get_any_name(): _fixed_batch(port, batch) for port in model.inputs})
        return core.compile_model(model, "CPU", config)

    compiled = compile_batch(1)
    inputs = tuple(_graph_name(port) for port in compiled.inputs)
    outputs = tuple(_graph_name(port) for port in compiled.outputs)
    return Session(
        inputs,
        outputs,
        compiled.create_infer_request(),
        "openvino",
        lambda batch: compile_batch(batch).create_infer_request(),
    )


def _fixed_batch(port: Any, batch: int) -> list[int]:
    shape = port.get_partial_shape()
    return [batch] + [int(d.get_length()) for d in list(shape)[1:]]


def _graph_name(port: Any) -> str:
    """The name the exported graph gave a port (OpenVINO also lists its own tensor names)."""
    known = set(GENERATOR_INPUTS + GENERATOR_OUTPUTS + WARP_INPUTS + WARP_OUTPUTS)
    names = sorted(set(port.get_names()) & known)
    return names[0] if names else str(port.get_any_name())


def as_array(x: torch.Tensor) -> np.ndarray:
    """A tensor as a C-contiguous fp32 array (no copy when it already is one)."""
    if x.dtype != torch.float32:
        x = x.float()
    return x.detach().contiguous().cpu().numpy()


def runtime_generator(session: Session) -> GeneratorFn:
    def run(x: torch.Tensor, controls: torch.Tensor) -> GeneratorOutput:
        out = session.run({"x": as_array(x), "controls": as_array(controls)})
        rgb, alpha, c3, c4, c5 = (torch.from_numpy(out[name]) for name in GENERATOR_OUTPUTS)
        return GeneratorOutput(rgb=rgb, alpha=alpha, c3=c3, c4=c4, c5=c5)

    return run


def runtime_warp(session: Session) -> WarpFn:
    """The implicit warp (the explicit one needs pixel motion, which only torch runs)."""

    def run(
        cache: NeuralCache,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
        motion: PixelMotion | None,
    ) -> WarpOutput:
        zeros = np.zeros(1, np.float32)  # a layer the avatar does not cache: not an input
        feeds = {
            "c3": as_array(cache.c3),
            "c4": zeros if cache.c4 is None else as_array(cache.c4),
            "c5": zeros if cache.c5 is None else as_array(cache.c5),
            "cache_uv": as_array(cache.uv),
            "cache_mask": as_array(cache.mask),
            "cache_controls": as_array(cache.controls),
            "uv": as_array(uv),
            "mask": as_array(mask),
            "controls": as_array(controls),
        }
        out = session.run(feeds)
        rgb, alpha = (torch.from_numpy(out[name]) for name in WARP_OUTPUTS)
        return WarpOutput(rgb=rgb, alpha=alpha)

    return WarpFn(run)
