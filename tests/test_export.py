"""Export: tiny generator (channels=8) -> ONNX in ONNX Runtime, parity, model repository versions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import parity, repository, tensorrt_build
from export.onnx_export import fold_generator
from export.pipeline import export_checkpoint, find_checkpoint
from training.checkpoint import CheckpointError, generator_from_checkpoint, load_checkpoint, save_checkpoint
from training.constants import MAX_BATCH_SIZE
from training.data.images import to_uint8_nhwc
from training.latents import seeds_to_latents

from .conftest import tiny_checkpoint_state

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = 8


def tiny_state(channels: int = CHANNELS) -> dict:
    return tiny_checkpoint_state(channels)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoint(workspace) -> Path:
    return save_checkpoint(workspace / "runs" / "tiny" / "checkpoint-latest.pt", tiny_state())


@pytest.fixture(scope="module")
def backend_source(workspace) -> Path:
    """The real Python backend when serving/ has it, else a stand-in file (only model.py's copy is tested here)."""
    if repository.BACKEND_SOURCE.is_file():
        return repository.BACKEND_SOURCE
    fake = workspace / "fake_serving" / "model.py"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("# stand-in for serving/python_backend/model.py\n")
    return fake


@pytest.fixture(scope="module")
def first_export(workspace, checkpoint, backend_source):
    return export_checkpoint(checkpoint, workspace / "repo", backend_source=backend_source, log=lambda line: None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fold_keeps_the_function(checkpoint):
    state = load_checkpoint(checkpoint)
    z = torch.from_numpy(seeds_to_latents(range(8), 128))
    with torch.no_grad():
        expected = generator_from_checkpoint(state)(z)
        folded = fold_generator(generator_from_checkpoint(state))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in folded.modules())
        torch.testing.assert_close(folded(z), expected, atol=1e-5, rtol=0)


def test_onnx_runs_dynamic_batches_and_matches_pytorch(first_export, checkpoint):
    path = first_export.version_dir / "generator.onnx"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["latent"] and [o.name for o in session.get_outputs()] == ["image"]
    generator = generator_from_checkpoint(load_checkpoint(checkpoint))  # as trained: unfolded, default attention
    for batch in (1, 7, 64):
        latents = seeds_to_latents(range(100, 100 + batch), 128)
        images = session.run(["image"], {"latent": latents})[0]
        assert images.dtype == np.uint8 and images.shape == (batch, 64, 64, 3)
        with torch.no_grad():
            expected = to_uint8_nhwc(generator(torch.from_numpy(latents))).numpy()
        difference = np.abs(images.astype(np.int16) - expected)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # off-by-one at rounding boundaries only


def test_parity_figures_recorded_and_within_thresholds(first_export):
    metadata = json.loads((first_export.version_dir / "metadata.json").read_text())
    fp32 = metadata["parity"]["onnx"]
    assert fp32["passed"] and fp32["seeds"] == "0-63" and set(fp32["batch_sizes"]) == {"1", "7", "64"}
    assert fp32["worst"]["float_max_abs_diff"] <= 1e-4 and fp32["worst"]["uint8_share_gt1"] <= 1e-4
    assert fp32["worst"]["uint8_max_diff"] <= 1
    fp16 = metadata["parity"]["onnx_fp16"]
    assert fp16["precision"] == "fp16" and fp16["worst"]["float_max_abs_diff"] is not None
    published = (first_export.version_dir / "generator_fp16.onnx").is_file()
    assert published == fp16["passed"] == metadata["fp16"]["published"]
    assert metadata["engines"]["onnx_fp16"] == ("generator_fp16.onnx" if published else None)
    if published:
        session = ort.InferenceSession(str(first_export.version_dir / "generator_fp16.onnx"), providers=["CPUExecutionProvider"])
        images = session.run(["image"], {"latent": seeds_to_latents([0, 1, 2], 128)})[0]
        assert images.dtype == np.uint8 and images.shape == (3, 64, 64, 3)
    assert metadata["parity"]["tensorrt"] is None and metadata["tensorrt"] is None


def test_metadata_and_version_contents(first_export, checkpoint, backend_source):
    version = first_export.version_dir
    assert version.name == "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["source"]["sha256"] == sha256(checkpoint)
    assert metadata["source"]["checkpoint"] == str(checkpoint.resolve())
    assert (metadata["step"], metadata["epoch"], metadata["format"]) == (1234, 3, "bamsgan-model-version")
    assert metadata["z_dim"] == 128 and metadata["image_shape"] == [64, 64, 3]
    assert metadata["architecture"]["channels"] == CHANNELS
    assert metadata["engines"]["onnx"] == "generator.onnx" and metadata["engines"]["tensorrt"] is None
    assert {"torch", "onnx", "onnxruntime", "opset", "tensorrt"} <= set(metadata["versions"])
    assert (version / "model.py").read_bytes() == backend_source.read_bytes()
    assert (version / "latents.py").read_bytes() == (ROOT / "training" / "latents.py").read_bytes()
    assert (version / "engines.py").read_bytes() == (ROOT / "serving" / "python_backend" / "engines.py").read_bytes()
    names = {p.name for p in version.iterdir()}
    assert {"model.py", "latents.py", "engines.py", "generator.onnx", "metadata.json"} <= names and "generator.plan" not in names
    # Compiled at export: a Python backend that wrote them at load would look like a change to the
    # server's repository poll and reload the model.
    cached = {Path(p).name.split(".")[0] for p in (version / "__pycache__").iterdir()}
    assert cached == {"model", "latents", "engines"}


def test_config_pbtxt_created_and_parses(first_export):
    path = first_export.version_dir.parent / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == MAX_BATCH_SIZE
    tensors = {t.name: t for t in list(config.input) + list(config.output)}
    assert list(tensors["SEED"].dims) == [1] and list(tensors["IMAGE"].dims) == [64, 64, 3]
    assert tensors["TRUNCATION"].optional and model_config_pb2.DataType.Name(tensors["IMAGE"].data_type) == "TYPE_UINT8"


def test_config_sync_fixes_only_fields_out_of_step(tmp_path):
    text = (
        '# tuned by serving\nname: "bamsgan"\nbackend: "python"\nmax_batch_size: 512\n'
        'input [ { name: "SEED"  # seeds\n data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        'output [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 3, 64, 64 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 100 }\n"
    )
    (tmp_path / "config.pbtxt").write_text(text)
    changes = repository.sync_config(tmp_path, "bamsgan", max_batch_limit=128)
    assert len(changes) == 2
    fixed = (tmp_path / "config.pbtxt").read_text()
    assert fixed == text.replace("512", "128").replace("[ 3, 64, 64 ]", "[ 64, 64, 3 ]")  # comments and the rest kept
    assert repository.sync_config(tmp_path, "bamsgan", max_batch_limit=128) == []


def test_second_export_is_version_2_and_leaves_version_1_untouched(first_export, workspace, checkpoint, backend_source):
    first = first_export.version_dir
    before = {str(p.relative_to(first)): sha256(p) for p in first.rglob("*") if p.is_file()}
    second = export_checkpoint(checkpoint, workspace / "repo", fp16=False, backend_source=backend_source, log=lambda line: None)
    assert second.version_dir == first.parent / "2"
    assert {str(p.relative_to(first)): sha256(p) for p in first.rglob("*") if p.is_file()} == before
    assert second.metadata["engines"]["onnx_fp16"] is None and not (second.version_dir / "generator_fp16.onnx").exists()
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".partial")]


def test_publish_takes_the_next_free_number_and_needs_the_backend(tmp_path, backend_source):
    model_dir = tmp_path / "bamsgan"
    (model_dir / "7").mkdir(parents=True)
    (model_dir / "7" / "keep").write_text("old")
    artifact = tmp_path / "generator.onnx"
    artifact.write_bytes(b"onnx")
    version = repository.publish_version(model_dir, {"generator.onnx": artifact}, {"x": 1}, backend_source=backend_source)
    assert version.name == "8" and (model_dir / "7" / "keep").read_text() == "old"
    with pytest.raises(repository.RepositoryError, match="does not exist"):
        repository.publish_version(model_dir, {}, {}, backend_source=tmp_path / "missing" / "model.py")
    assert sorted(p.name for p in model_dir.iterdir()) == ["7", "8"]


def _bad_checkpoint(kind: str, directory: Path, good: Path) -> Path:
    path = directory / f"{kind}.pt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    else:  # mismatched: the model dict says channels=16, the weights are channels=8
        state = load_checkpoint(good)
        state["model"] = {**state["model"], "channels": 16}
        save_checkpoint(path, state)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [("truncated", "truncated or not a PyTorch checkpoint"), ("foreign", "not a BaMSGAN checkpoint"), ("mismatched", "do not fit its architecture")],
)
def test_bad_checkpoint_is_a_clear_error_and_publishes_nothing(kind, message, tmp_path, checkpoint, backend_source):
    path = _bad_checkpoint(kind, tmp_path, checkpoint)
    with pytest.raises(CheckpointError, match=message):
        export_checkpoint(path, tmp_path / "repo", backend_source=backend_source, log=lambda line: None)
    assert not (tmp_path / "repo").exists()


def test_nan_generator_fails_and_publishes_nothing(tmp_path, checkpoint, backend_source):
    state = load_checkpoint(checkpoint)
    state["G_ema"] = {k: v.fill_(float("nan")) if k.endswith("bias") and v.is_floating_point() else v for k, v in state["G_ema"].items()}
    path = save_checkpoint(tmp_path / "diverged.pt", state)
    with pytest.raises(parity.ParityError, match="NaN"):
        export_checkpoint(path, tmp_path / "repo", backend_source=backend_source, log=lambda line: None)
    assert not (tmp_path / "repo").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_bad_checkpoint_exits_2_with_one_line(tmp_path, checkpoint):
    path = _bad_checkpoint("truncated", tmp_path, checkpoint)
    result = _cli("--ckpt", str(path), "--repository", str(tmp_path / "repo"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "truncated or not a PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.skipif(tensorrt_build.missing_requirements() is None, reason="this machine can build TensorRT engines")
def test_cli_trt_without_gpu_or_tensorrt_exits_2(tmp_path, checkpoint):
    result = _cli("--trt", "--ckpt", str(checkpoint), "--repository", str(tmp_path / "repo"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"export: error: {tensorrt_build.missing_requirements()}"
    assert "TensorRT" in result.stderr and not (tmp_path / "repo").exists()


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"no training runs under .*make train"):
        find_checkpoint(runs_dir=tmp_path / "runs")
    older, newer = tmp_path / "runs" / "a" / "checkpoint-latest.pt", tmp_path / "runs" / "b" / "checkpoint-latest.pt"
    for index, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + index, 1000 + index))
    assert find_checkpoint(runs_dir=tmp_path / "runs") == newer
    assert find_checkpoint(run=tmp_path / "runs" / "a") == older


def test_tensorrt_build_settings_without_tensorrt():
    settings = tensorrt_build.build_settings(fp32_layer_names=["node_tanh"])
    assert (settings.min_shape, settings.opt_shape, settings.max_shape) == ((1, 128), (64, 128), (256, 128))
    assert settings.input_name == "latent" and settings.max_batch == 256
    assert settings.fp16 and settings.obey_precision_constraints
    assert set(settings.fp32_layer_types) == {"MATRIX_MULTIPLY", "SOFTMAX"} and settings.fp32_layer_names == ("node_tanh",)
    assert settings.timing_cache == ROOT / ".cache" / "tensorrt" / "timing.cache"
    fp32 = tensorrt_build.build_settings(fp16=False)
    assert not fp32.fp16 and not fp32.obey_precision_constraints and fp32.fp32_layer_types == ()
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tensorrt_build.build_settings(opt_batch=512)


def test_parity_verdict_uses_the_thresholds():
    reference = np.zeros((2, 3, 64, 64), np.float32)
    exact = to_uint8_nhwc(torch.from_numpy(reference)).numpy()
    assert parity.summarise({1: parity.figures(reference, exact, reference)}, "fp32")["passed"]
    off = exact.copy()
    off[0, :8] += 3  # 1/16 of one image's pixels off by 3 levels
    result = parity.summarise({1: parity.figures(reference, off, reference + 0.02)}, "fp16")
    assert not result["passed"] and len(result["failures"]) == 1 and "off by > 2 levels" in result["failures"][0]
    assert not parity.summarise({1: parity.figures(reference, exact, reference * np.nan)}, "fp32")["passed"]


@pytest.mark.skipif(tensorrt_build.missing_requirements() is not None, reason="needs a CUDA GPU and TensorRT")
def test_tensorrt_engine_published_with_parity(tmp_path, checkpoint, backend_source):
    result = export_checkpoint(checkpoint, tmp_path / "repo", trt=True, backend_source=backend_source, log=lambda line: None)
    metadata = result.metadata
    assert (result.version_dir / "generator.plan").is_file() and metadata["engines"]["tensorrt"] == "generator.plan"
    assert metadata["parity"]["tensorrt"]["passed"] and metadata["tensorrt"]["profile"]["max"] == [256, 128]
    assert metadata["versions"]["tensorrt"] and metadata["tensorrt"]["gpu"]
    config = text_format.Parse((tmp_path / "repo" / "bamsgan" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size <= 256
    runner = tensorrt_build.EngineRunner((result.version_dir / "generator.plan").read_bytes())
    for batch in (1, 7, 256):
        assert runner(seeds_to_latents(range(batch), 128)).shape == (batch, 64, 64, 3)
