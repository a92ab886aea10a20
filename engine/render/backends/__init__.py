"""How the renderer's two networks run on this machine: torch, ONNX Runtime or OpenVINO, at fp32,
bf16, fp16 or int8, per stage, chosen by measurement (`select.py`)."""
