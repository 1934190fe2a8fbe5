"""Export: the trained generator -> ONNX / FP16 ONNX / TensorRT, parity-checked, published as a new
version of the Triton model repository (`make export`, `python -m export`).

- `export.onnx_export`: fold spectral norm + BatchNorm, export latent FP32 -> image UINT8, FP16 variant.
- `export.parity`: each engine against the PyTorch generator on seeds 0..63, batch 1, 7 and 64.
- `export.tensorrt_build`: `build_settings` (pure) + a thin TensorRT layer (GPU only).
- `export.repository`: numbered versions written atomically; config.pbtxt kept in step.
- `export.pipeline`: the stages in order; `export.__main__`: the CLI; `export.benchmark`: images/s.
"""
