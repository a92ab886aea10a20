"""int8 models by post-training quantization (ONNX Runtime's `quantize_static`), calibrated on the
avatar's own inputs.

QDQ format (quantize/dequantize pairs around each quantized op), so that ONNX Runtime and OpenVINO
read the same file; weights int8 per output channel (a folded BatchNorm leaves channels of very
different scale), activations uint8 per tensor with min/max ranges from the calibration frames.
Whether the result is good enough is not assumed: the quality gate measures it.

The generator is quantized only where it holds (`python -m bench.int8_sensitivity`,
`bench/results/int8_sensitivity.json`, the shipped avatar): quantized whole it fell to 11.8 dB
from fp32, and its first convolution alone took it to 13.4 dB (its input, the neural texture's 17
channels, spans -6..5.5 with some channels' spread under 0.02: one uint8 range wipes them out);
the full- and half-resolution encoder blocks alone 13-40 dB, every later convolution alone 44-59
dB. Those two blocks (16% of its multiply-adds) stay in float, only convolutions and linear layers
are quantized (with every kind, the activations between the float blocks were quantized too: 28.6
dB in the quality gate), and they take ranges that leave out the calibration's rarest 0.001%
(`GENERATOR_FLOAT_BLOCKS`, `GENERATOR_OP_TYPES`, percentile): 42.1 dB, where min/max gave 39.5.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# The generator's blocks kept in float (module names in the exported graph): see the docstring.
GENERATOR_FLOAT_BLOCKS = ("encoder.0", "encoder.1")
GENERATOR_OP_TYPES = ("Conv", "Gemm")


def convs_in(source: Path, blocks: Sequence[str]) -> list[str]:
    """The names of the graph's convolutions inside the modules `blocks` (exported names carry
    the module path: /generator/encoder.0/encoder.0.0/Conv)."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and any(f"/{block}/" in n.name for block in blocks)
    ]


def quantize_int8(
    source: Path,
    target: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    keep_float: Sequence[str] = (),
    percentile: bool = False,
    op_types: Sequence[str] | None = None,
) -> Path:
    """Quantize the fp32 graph `source` into `target` (written atomically), its activation ranges
    calibrated on `feeds` (the graph's inputs by name, one dict per batch). `keep_float`: nodes
    left in float; `percentile`: ranges that leave out the rarest 0.001% of values instead of
    min/max; `op_types`: only these kinds of node quantized (None: every kind ONNX Runtime can),
    so that an activation between two float nodes stays float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not feeds:
        raise ValueError("int8 calibration needs at least one batch of inputs")
    # The exporter drops inputs a network does not read (controls of an unconditioned generator).
    inputs = {i.name for i in onnx.load(str(source), load_external_data=False).graph.input}
    feeds = [{k: v for k, v in feed.items() if k in inputs} for feed in feeds]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger
    try:
        quantize_static(
            str(source),
            tmp,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_float),
            op_types_to_quantize=None if op_types is None else list(op_types),
            calibrate_method=CalibrationMethod.Percentile
            if percentile
            else CalibrationMethod.MinMax,
        )
        os.replace(tmp, target)
    finally:
        logging.getLogger().setLevel(quiet)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
