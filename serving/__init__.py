"""Serving: NVIDIA Triton Inference Server for BaMSGAN (`python -m serving`, make serve).

- serving/launcher.py        `TritonServer`: find tritonserver, prepare the Python backend stub, start, wait ready, stop.
- serving/python_backend/    the served model's model.py and engines.py (ONNX Runtime / TensorRT runners; the
                             benchmark's raw baseline imports it), copied into every model version by export/.
- serving/ensemble.py        `python -m serving.ensemble`: the full-Triton ensemble repository from a version.
- serving/ensemble_repository/  configs of the ensemble (latents step + native onnxruntime/tensorrt generator).
"""

from serving.launcher import LaunchError, TritonServer, free_ports

__all__ = ["LaunchError", "TritonServer", "free_ports"]
