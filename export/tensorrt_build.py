"""ONNX -> TensorRT engine (generator.plan), for the GPU serving path.

Two layers:
- `build_settings(...)` is a pure function: it decides everything about a build (optimisation
  profile on `latent`, FP16, which layers are pinned to fp32, timing cache, workspace) and returns a
  `TrtBuildSettings` dataclass. Tests check it without TensorRT.
- `build_engine`, `run_engine`, `engine_info` are thin calls into the `tensorrt` package (10.x API:
  explicit batch, named I/O tensors, execute_async_v3), used only when a CUDA GPU is present.

Precision: FP16 everywhere except the attention core (MatMul + Softmax layers, fp32 as in training
and in the FP16 ONNX variant) and the tanh -> uint8 tail; BuilderFlag.OBEY_PRECISION_CONSTRAINTS
makes those pins binding. The exporter checks the engine's parity against PyTorch and rebuilds
without FP16 when it fails.

The timing cache (.cache/tensorrt/timing.cache, git-ignored) is read before and written after each
build, so rebuilding the same layers on the same GPU skips the tactic timing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from serving.python_backend.engines import TensorRTEngine
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, MAX_BATCH_SIZE, Z_DIM

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TIMING_CACHE = ROOT / ".cache" / "tensorrt" / "timing.cache"
FP32_LAYER_TYPES = ("MATRIX_MULTIPLY", "SOFTMAX")  # trt.LayerType names: the attention core

MISSING_GPU = "TensorRT export needs a CUDA GPU: none found (torch.cuda.is_available() is False)"
MISSING_TENSORRT = "TensorRT is not installed: pip install -r requirements-gpu.txt"


class TensorRTUnavailable(RuntimeError):
    """No CUDA GPU or no `tensorrt` package; the message says which."""


@dataclass(frozen=True)
class TrtBuildSettings:
    input_name: str
    min_shape: tuple[int, int]
    opt_shape: tuple[int, int]
    max_shape: tuple[int, int]
    fp16: bool
    obey_precision_constraints: bool
    fp32_layer_types: tuple[str, ...]  # trt.LayerType names kept in fp32
    fp32_layer_names: tuple[str, ...] = field(default=())  # layers kept in fp32 by name (ONNX node names)
    timing_cache: Path = DEFAULT_TIMING_CACHE
    workspace_bytes: int = 2 << 30

    @property
    def max_batch(self) -> int:
        return self.max_shape[0]


def build_settings(
    z_dim: int = Z_DIM,
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = MAX_BATCH_SIZE,
    fp16: bool = True,
    fp32_layer_names: tuple[str, ...] | list[str] = (),
    timing_cache: str | os.PathLike = DEFAULT_TIMING_CACHE,
) -> TrtBuildSettings:
    """The whole build configuration, decided without TensorRT.

    fp32_layer_names: ONNX node names to keep in fp32 besides the attention core (the exporter
    passes the tanh -> uint8 tail, `onnx_export.tail_node_names`); the ONNX parser names layers
    after their nodes.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"profile needs 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    return TrtBuildSettings(
        input_name="latent",
        min_shape=(min_batch, z_dim),
        opt_shape=(opt_batch, z_dim),
        max_shape=(max_batch, z_dim),
        fp16=fp16,
        obey_precision_constraints=fp16,  # pins only mean something when FP16 is allowed
        fp32_layer_types=FP32_LAYER_TYPES if fp16 else (),
        fp32_layer_names=tuple(fp32_layer_names) if fp16 else (),
        timing_cache=Path(timing_cache),
    )


def missing_requirements() -> str | None:
    """What TensorRT export lacks on this machine, in one line; None when it can run."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(MISSING_GPU)
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer/libcuda cannot load
        problems.append(MISSING_TENSORRT)
    return "; ".join(problems) or None


def require_tensorrt() -> None:
    problem = missing_requirements()
    if problem:
        raise TensorRTUnavailable(problem)


def engine_info() -> dict:
    """The TensorRT version and GPU an engine is built for (engines only run on that pairing)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


# ---- thin TensorRT layer (GPU only) ----


def _apply_precision_constraints(trt, network, settings: TrtBuildSettings) -> list[str]:
    """Pin the configured layers to fp32; returns the names of the layers pinned."""
    types = {getattr(trt.LayerType, name) for name in settings.fp32_layer_types}
    names = set(settings.fp32_layer_names)
    floating = {trt.float32, trt.float16}
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in types and layer.name not in names:
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in floating:  # never re-type the uint8 Cast output
                layer.set_output_type(output, trt.float32)
        pinned.append(layer.name)
    return pinned


def build_engine(onnx_path: str | os.PathLike, settings: TrtBuildSettings) -> tuple[bytes, list[str]]:
    """Parse the ONNX file and build a serialized engine; returns (plan bytes, fp32-pinned layers)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape(settings.input_name, settings.min_shape, settings.opt_shape, settings.max_shape)
    config.add_optimization_profile(profile)
    pinned = []
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _apply_precision_constraints(trt, network, settings)
    if settings.obey_precision_constraints:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    cache_path = settings.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # cache from another GPU/TensorRT
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_name(f".{cache_path.name}.partial")
    partial.write_bytes(memoryview(config.get_timing_cache().serialize()))
    os.replace(partial, cache_path)
    return bytes(memoryview(plan)), pinned


class EngineRunner(TensorRTEngine):
    """Run a serialized engine on the GPU: latents float32 [B, z] -> uint8 images [B, 64, 64, 3].

    The served model's own runner (serving/python_backend/engines.py), so parity measures the
    engine exactly as it will be served.
    """

    def __init__(self, plan: bytes, device_id: int = 0):
        super().__init__(plan, device_id, (IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS))
