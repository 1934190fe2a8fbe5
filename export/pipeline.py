"""One export: checkpoint -> folded generator -> ONNX (+FP16, +TensorRT) -> parity -> new model version.

Stages (each prints one progress line):
1. checkpoint: load it (CheckpointError for a missing, truncated, foreign or mismatched file) and
   hash it; the EMA generator is what gets exported.
2. onnx: fold spectral norm + BatchNorm, export generator.onnx, parity vs PyTorch (must pass:
   otherwise nothing is published).
3. fp16: generator_fp16.onnx, published if its parity passes, else recorded as rejected.
4. tensorrt (--trt, CUDA only): generator.plan, FP16 when its parity passes, else FP32.
5. publish: config.pbtxt kept in step, then the version directory appears in one rename.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from export import onnx_export, parity, repository, tensorrt_build
from training.networks.attention import set_attention_impl
from training.checkpoint import LATEST, CheckpointError, generator_from_checkpoint, load_checkpoint
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, Z_DIM



@dataclass
class ExportResult:
    version_dir: Path
    metadata: dict
    config_changes: list[str]


def find_checkpoint(run: str | os.PathLike | None = None, ckpt: str | os.PathLike | None = None, runs_dir: str | os.PathLike = "runs") -> Path:
    """The checkpoint to export: --ckpt, --run's latest, or the newest run's latest under runs/."""
    if ckpt is not None:
        path = Path(ckpt)
        return path / LATEST if path.is_dir() else path
    if run is not None:
        run = Path(run)
        if not run.is_dir():
            raise CheckpointError(f"no training run at {run}")
        if not (run / LATEST).is_file():
            raise CheckpointError(f"{run} has no {LATEST} yet (a run writes it after its first epoch)")
        return run / LATEST
    candidates = list(Path(runs_dir).glob(f"*/{LATEST}"))
    if not candidates:
        raise CheckpointError(f"no training runs under {runs_dir}/; run `make train` first or pass --ckpt")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict, str]:
    """(checkpoint, sha256 of the very bytes loaded). Training replaces checkpoint-latest.pt by rename
    each epoch; if that happens between hashing and loading, read again."""
    for _ in range(3):
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        before = path.stat()
        digest = _sha256(path)
        state = load_checkpoint(path)
        after = path.stat()
        if (before.st_ino, before.st_size, before.st_mtime_ns) == (after.st_ino, after.st_size, after.st_mtime_ns):
            return state, digest
    raise CheckpointError(f"{path} kept changing while being read (is training writing it?); try again")


def check_architecture(state: dict, path: Path) -> dict:
    model = state["model"]
    missing = [key for key in ("z_dim", "channels", "attention") if not isinstance(model, dict) or key not in model]
    if missing:
        raise CheckpointError(f"{path}: its model description {model!r} lacks {', '.join(missing)}")
    if model["z_dim"] != Z_DIM:
        raise CheckpointError(f"{path}: z_dim {model['z_dim']} differs from the served latent size {Z_DIM}")
    return model


def _versions(trt_version: str | None) -> dict:
    import onnxconverter_common
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxconverter_common": onnxconverter_common.__version__,
        "opset": onnx_export.OPSET,
        "tensorrt": trt_version,
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    repository_dir: str | os.PathLike = "model_repository",
    model_name: str = "bamsgan",
    fp16: bool = True,
    trt: bool = False,
    work_dir: str | os.PathLike | None = None,
    backend_source: str | os.PathLike = repository.BACKEND_SOURCE,
    log=print,
) -> ExportResult:
    """Export the checkpoint's EMA generator as a new version of repository_dir/model_name."""
    if trt:
        tensorrt_build.require_tensorrt()
    checkpoint = Path(checkpoint)
    log(f"[export] checkpoint {checkpoint}")
    state, digest = read_checkpoint(checkpoint)
    model = check_architecture(state, checkpoint)
    reference = set_attention_impl(generator_from_checkpoint(state, ema=True), "reference")
    folded = onnx_export.fold_generator(generator_from_checkpoint(state, ema=True))
    repository.check_backend_source(backend_source)  # before the work, not after it
    log(f"[export]   epoch {state['epoch']}, step {state['step']}, model {model}, sha256 {digest[:12]}")

    latents = parity.parity_latents(model["z_dim"])
    reference_images = parity.reference_images(reference, latents)
    with tempfile.TemporaryDirectory(prefix="bamsgan-export-") as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)

        onnx_path, fp32_model, results = _export_fp32(folded, work, reference_images, latents, log)
        artifacts = {"generator.onnx": onnx_path}

        fp16_status = {"published": False, "reason": "not requested (--no-fp16)"}
        if fp16:
            fp16_path, results["onnx_fp16"], fp16_status = _export_fp16(fp32_model, work, reference_images, latents, log)
            if fp16_path is not None:
                artifacts["generator_fp16.onnx"] = fp16_path

        trt_meta, max_batch_limit = None, None
        if trt:
            plan_path = work / "generator.plan"
            trt_meta, results["tensorrt"] = _build_tensorrt(onnx_path, fp32_model, plan_path, reference_images, latents, log)
            artifacts["generator.plan"] = plan_path
            max_batch_limit = trt_meta["profile"]["max"][0]

        metadata = _version_metadata(model_name, checkpoint, digest, state, model, artifacts, results, fp16_status, trt_meta)
        model_dir = Path(repository_dir) / model_name
        changes = repository.sync_config(model_dir, model_name, max_batch_limit)
        for change in changes:
            log(f"[export] config.pbtxt: {change}")
        version_dir = repository.publish_version(model_dir, artifacts, metadata, backend_source=backend_source)
    log(f"[export] published {version_dir}")
    return ExportResult(version_dir, metadata, changes)


def _export_fp32(folded: torch.nn.Module, work: Path, reference_images, latents, log) -> tuple[Path, onnx.ModelProto, dict]:
    """Export generator.onnx and check its parity with PyTorch, which must pass (else ParityError, nothing
    published): (its path, the model, {"onnx": parity})."""
    log(f"[export] onnx: {onnx_export.EXPORTER} -> {work / 'generator.onnx'}")
    onnx_path = work / "generator.onnx"
    fp32_model = onnx_export.export_onnx(folded, onnx_path)
    results = {"onnx": parity.onnx_parity(fp32_model, reference_images, latents, "fp32")}
    log(f"[export]   parity {_brief(results['onnx'])}")
    if not results["onnx"]["passed"]:
        raise parity.ParityError(f"generator.onnx fails parity with PyTorch: {'; '.join(results['onnx']['failures'])}; nothing published")
    return onnx_path, fp32_model, results


def _export_fp16(fp32_model: onnx.ModelProto, work: Path, reference_images, latents, log) -> tuple[Path | None, dict, dict]:
    """Convert to generator_fp16.onnx and check its parity: (its path, or None when rejected; the parity;
    the metadata's "fp16" status)."""
    log("[export] onnx fp16: onnxconverter_common float16 (attention MatMul/Softmax and uint8 tail in fp32)")
    fp16_path = work / "generator_fp16.onnx"
    fp16_model = onnx_export.convert_fp16(fp32_model)
    onnx.save(fp16_model, str(fp16_path))
    result = parity.onnx_parity(fp16_model, reference_images, latents, "fp16")
    log(f"[export]   parity {_brief(result)}")
    if result["passed"]:
        return fp16_path, result, {"published": True, "reason": "parity within fp16 thresholds"}
    status = {"published": False, "reason": "rejected: " + "; ".join(result["failures"])}
    log(f"[export]   generator_fp16.onnx not published ({status['reason']})")
    return None, result, status


def _version_metadata(model_name: str, checkpoint: Path, digest: str, state: dict, model: dict, artifacts: dict[str, Path],
                      results: dict, fp16_status: dict, trt_meta: dict | None) -> dict:
    """metadata.json of a new version: its source checkpoint, architecture, I/O, engines, parity and versions."""
    return {
        "format": "bamsgan-model-version",
        "format_version": 1,
        "model": model_name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"checkpoint": str(checkpoint.resolve()), "sha256": digest, "bytes": checkpoint.stat().st_size, "weights": "G_ema"},
        "epoch": state["epoch"],  # completed training epochs
        "step": state["step"],
        "architecture": {"generator": "training.networks.sagan.Generator", **model},
        "training_config": state.get("config"),
        "z_dim": model["z_dim"],
        "image_shape": [IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS],
        "io": {
            "input": {"name": onnx_export.INPUT_NAME, "dtype": "FP32", "shape": [-1, model["z_dim"]]},
            "output": {"name": onnx_export.OUTPUT_NAME, "dtype": "UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS]},
        },
        "engines": {
            "onnx": "generator.onnx",
            "onnx_fp16": "generator_fp16.onnx" if "generator_fp16.onnx" in artifacts else None,
            "tensorrt": "generator.plan" if "generator.plan" in artifacts else None,
        },
        "parity": {engine: results.get(engine) for engine in ("onnx", "onnx_fp16", "tensorrt")},
        "fp16": fp16_status,
        "tensorrt": trt_meta,
        "export": {
            "exporter": onnx_export.EXPORTER,
            "folded": ["spectral_norm", "BatchNorm2d -> ConvTranspose2d"],
            "attention": "reference (MatMul + Softmax)",
            "fp16_fp32_ops": list(onnx_export.FP16_BLOCKED_OPS) + ["tanh -> uint8 tail"],
        },
        "versions": _versions(trt_meta["tensorrt"] if trt_meta else None),
    }


def _build_tensorrt(onnx_path: Path, model: onnx.ModelProto, plan_path: Path, reference_images, latents, log) -> tuple[dict, dict]:
    """Build generator.plan: FP16 (attention and tail pinned to fp32) when it passes parity, else FP32."""
    info = tensorrt_build.engine_info()
    for use_fp16 in (True, False):
        settings = tensorrt_build.build_settings(fp16=use_fp16, fp32_layer_names=onnx_export.tail_node_names(model))
        precision = "fp16" if use_fp16 else "fp32"
        log(f"[export] tensorrt {info['tensorrt']} on {info['gpu']}: {precision}, profile {settings.min_shape}/{settings.opt_shape}/{settings.max_shape}")
        plan, pinned = tensorrt_build.build_engine(onnx_path, settings)
        runner = tensorrt_build.EngineRunner(plan)
        result = parity.engine_parity(runner, reference_images, latents, precision)
        log(f"[export]   parity {_brief(result)}")
        if result["passed"]:
            plan_path.write_bytes(plan)
            meta = {
                **info,
                "precision": precision,
                "profile": {"input": settings.input_name, "min": list(settings.min_shape), "opt": list(settings.opt_shape), "max": list(settings.max_shape)},
                "fp32_layers": pinned,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            }
            return meta, result
        log(f"[export]   tensorrt {precision} engine rejected: {'; '.join(result['failures'])}")
    raise parity.ParityError("the TensorRT engine fails parity with PyTorch even in fp32; nothing published")


def _brief(result: dict) -> str:
    worst = result["worst"]
    floats = "" if worst["float_max_abs_diff"] is None else f"float max|d| {worst['float_max_abs_diff']:.2e}, "
    verdict = "pass" if result["passed"] else "FAIL"
    return f"{floats}uint8 max {worst['uint8_max_diff']}, >1 level {worst['uint8_share_gt1']:.2e}: {verdict}"
