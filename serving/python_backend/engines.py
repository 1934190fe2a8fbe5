"""Engines of the served model: latent FP32 [B, Z] -> image UINT8 [B, H, W, 3].

The one definition of how the project runs the exported generator: model.py (the Triton Python
backend) loads this file from its own version directory (export/ copies it there, like
latents.py), and the benchmark's in-process baseline (clients/benchmark.py) imports it, so the
served and the raw engine share their ONNX Runtime session options and thread default.
export/tensorrt_build.py's parity runner is this TensorRTEngine too. Imports onnxruntime /
tensorrt / torch only when an engine is made.
"""

import numpy as np

DEFAULT_ORT_THREADS = 0  # ONNX Runtime intra-op threads on CPU: 0 = ONNX Runtime's default, one per core


def ort_session_options(threads=DEFAULT_ORT_THREADS):
    """ONNX Runtime session options of the served engine (threads > 0: that many intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    return options


class OnnxRuntimeEngine:
    """generator.onnx through ONNX Runtime: latent FP32 [B, Z] -> image UINT8 [B, 64, 64, 3]."""

    def __init__(self, path, providers, threads):
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, sess_options=ort_session_options(threads), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()
        self.max_batch = None  # any batch size

    def __call__(self, latents):
        return self.session.run([self.output_name], {self.input_name: latents})[0]


class TensorRTEngine:
    """generator.plan through TensorRT (>= 10 tensor API), CUDA buffers from torch.

    plan: the path of a plan file, or its bytes. image_shape: [H, W, C] of the output image.
    """

    def __init__(self, plan, device_id, image_shape):
        import tensorrt as trt
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device_id)
        torch.cuda.set_device(self.device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        what = "the engine" if isinstance(plan, (bytes, bytearray, memoryview)) else str(plan)
        if not isinstance(plan, (bytes, bytearray, memoryview)):
            with open(plan, "rb") as file:
                plan = file.read()
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {what} (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.stream = torch.cuda.Stream(self.device)
        self.providers = ["TensorRT"]
        self.image_shape = tuple(image_shape)  # [H, W, C] of the served IMAGE

    def __call__(self, latents):
        torch = self.torch
        with torch.cuda.stream(self.stream):
            inputs = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(self.device, non_blocking=True)
            outputs = torch.empty((latents.shape[0], *self.image_shape), dtype=torch.uint8, device=self.device)
            self.context.set_input_shape(self.input_name, tuple(inputs.shape))
            self.context.set_tensor_address(self.input_name, inputs.data_ptr())
            self.context.set_tensor_address(self.output_name, outputs.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            images = outputs.cpu()
        return images.numpy()
