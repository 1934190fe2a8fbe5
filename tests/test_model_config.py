"""Every config.pbtxt against Triton's own ModelConfig protobuf, and the ensemble repository.

The native onnxruntime / tensorrt_plan backends are not in the pip tritonserver, so the ensemble
is checked live with a stand-in: the generator step as a Python model running the same
model.onnx through ONNX Runtime. Everything else (ensemble wiring, optional TRUNCATION passing
through, the latents step) is the real configuration.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from serving.ensemble import EnsembleError, build_ensemble, main as ensemble_main
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, MAX_BATCH_SIZE, Z_DIM
from training.latents import seeds_to_latents

REPO_ROOT = Path(__file__).resolve().parent.parent
ENSEMBLE = REPO_ROOT / "serving" / "ensemble_repository"
CONFIGS = sorted(REPO_ROOT.glob("model_repository/*/config.pbtxt")) + sorted(ENSEMBLE.glob("*/config.pbtxt"))
DataType = model_config_pb2.DataType


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(items) -> dict:
    return {item.name: (DataType.Name(item.data_type), list(item.dims), item.optional if hasattr(item, "optional") else False) for item in items}


def test_configs_exist():
    names = {path.relative_to(REPO_ROOT).as_posix() for path in CONFIGS}
    assert names == {
        "model_repository/bamsgan/config.pbtxt",
        "serving/ensemble_repository/bamsgan/config.pbtxt",
        "serving/ensemble_repository/bamsgan_latents/config.pbtxt",
        "serving/ensemble_repository/bamsgan_generator/config.pbtxt",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_config_parses_as_triton_model_config(path):
    config = parse(path)  # raises on unknown fields, wrong types, bad enum values
    assert config.name == path.parent.name, "model name must match its folder"
    assert config.backend or config.platform
    assert config.max_batch_size == MAX_BATCH_SIZE


SERVED_INPUTS = {"SEED": ("TYPE_INT64", [1], False), "TRUNCATION": ("TYPE_FP32", [1], True),
                 "SEED_B": ("TYPE_INT64", [1], True), "MIX": ("TYPE_FP32", [1], True)}
SERVED_OUTPUTS = {"IMAGE": ("TYPE_UINT8", [IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS], False)}


def test_served_model_contract():
    config = parse(REPO_ROOT / "model_repository/bamsgan/config.pbtxt")
    assert config.backend == "python"
    assert tensors(config.input) == SERVED_INPUTS
    assert tensors(config.output) == SERVED_OUTPUTS
    assert config.HasField("dynamic_batching")
    assert {"engine", "ort_threads", "fp16"} <= set(config.parameters)
    assert config.parameters["engine"].string_value in ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
    assert int(config.parameters["ort_threads"].string_value) >= 0


def test_ensemble_wiring():
    configs = {path.parent.name: parse(path) for path in ENSEMBLE.glob("*/config.pbtxt")}
    ensemble = configs["bamsgan"]
    assert ensemble.platform == "ensemble"
    # Same client contract as the Python-backend model.
    assert tensors(ensemble.input) == SERVED_INPUTS
    assert tensors(ensemble.output) == SERVED_OUTPUTS
    latents, generator = configs["bamsgan_latents"], configs["bamsgan_generator"]
    assert tensors(latents.input) == SERVED_INPUTS
    assert tensors(latents.output) == {"LATENT": ("TYPE_FP32", [Z_DIM], False)}
    assert generator.platform == "onnxruntime_onnx"
    assert tensors(generator.input) == {"latent": ("TYPE_FP32", [Z_DIM], False)}
    assert tensors(generator.output) == {"image": ("TYPE_UINT8", [IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS], False)}

    # Every step names a model of this repository and maps exactly its inputs and outputs; each
    # internal tensor is produced by one step before another consumes it.
    available = {item.name for item in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size >= ensemble.max_batch_size
        assert set(step.input_map) == {item.name for item in model.input}
        assert set(step.output_map) == {item.name for item in model.output}
        assert set(step.input_map.values()) <= available
        available |= set(step.output_map.values())
    assert {item.name for item in ensemble.output} <= available


@pytest.fixture(scope="module")
def ensemble_repository(tmp_path_factory, published_version):
    repository = tmp_path_factory.mktemp("ensemble") / "repository"
    build_ensemble(published_version.version_dir, repository)
    return repository


def test_build_ensemble_populates_versions(ensemble_repository, published_version):
    version = published_version.version_dir.name
    for model in ("bamsgan", "bamsgan_latents", "bamsgan_generator"):
        assert parse(ensemble_repository / model / "config.pbtxt") == parse(ENSEMBLE / model / "config.pbtxt")
        assert (ensemble_repository / model / version).is_dir()
    latents_dir = ensemble_repository / "bamsgan_latents" / version
    assert sorted(p.name for p in latents_dir.iterdir()) == ["__pycache__", "latents.py", "metadata.json", "model.py"]
    assert (latents_dir / "latents.py").read_bytes() == (REPO_ROOT / "training/latents.py").read_bytes()
    model_onnx = ensemble_repository / "bamsgan_generator" / version / "model.onnx"
    assert model_onnx.read_bytes() == published_version.onnx_path.read_bytes()
    assert not (ensemble_repository / "bamsgan_generator" / version / "model.plan").exists()


def test_build_ensemble_tensorrt(tmp_path, published_version):
    version_dir = tmp_path / "bamsgan" / "4"
    shutil.copytree(published_version.version_dir, version_dir)
    with pytest.raises(EnsembleError, match="generator.plan"):
        build_ensemble(version_dir, tmp_path / "out", engine="tensorrt")
    (version_dir / "generator.plan").write_bytes(b"plan bytes")
    with pytest.raises(EnsembleError, match="--to"):
        build_ensemble(version_dir, ENSEMBLE, engine="tensorrt")  # would rewrite the tracked config
    build_ensemble(version_dir, tmp_path / "out", engine="tensorrt")
    generator = parse(tmp_path / "out" / "bamsgan_generator" / "config.pbtxt")
    assert generator.platform == "tensorrt_plan"
    expected = parse(ENSEMBLE / "bamsgan_generator" / "config.pbtxt")
    assert generator.input == expected.input and generator.output == expected.output
    assert (tmp_path / "out" / "bamsgan_generator" / "4" / "model.plan").read_bytes() == b"plan bytes"


def test_ensemble_cli_errors(tmp_path, capsys):
    assert ensemble_main(["--from", str(tmp_path / "bamsgan" / "1"), "--to", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "make export" in error and len(error.splitlines()) == 1


# A Python stand-in for the native onnxruntime backend (absent from the pip tritonserver).
STAND_IN_MODEL = '''
import os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        latents = [pb_utils.get_input_tensor_by_name(r, "latent").as_numpy() for r in requests]
        images = self.session.run(["image"], {"latent": np.concatenate(latents)})[0]
        responses, start = [], 0
        for part in latents:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("image", images[start : start + len(part)])]))
            start += len(part)
        return responses
'''


@pytest.fixture(scope="module")
def ensemble_server(tmp_path_factory, ensemble_repository, published_version):
    from serving.launcher import TritonServer, free_ports

    repository = tmp_path_factory.mktemp("ensemble-live") / "repository"
    shutil.copytree(ensemble_repository, repository)
    generator_dir = repository / "bamsgan_generator"
    config = parse(generator_dir / "config.pbtxt")
    config.platform, config.backend = "", "python"
    (generator_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    (generator_dir / published_version.version_dir.name / "model.py").write_text(STAND_IN_MODEL)
    server = TritonServer(repository, *free_ports(3), log_path=repository.parent / "tritonserver.log")
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def _infer(client, model, output, seeds, truncation=None):
    seed_array = np.asarray(seeds, np.int64).reshape(-1, 1)
    inputs = [grpcclient.InferInput("SEED", list(seed_array.shape), "INT64")]
    inputs[0].set_data_from_numpy(seed_array)
    if truncation is not None:
        values = np.asarray(truncation, np.float32).reshape(-1, 1)
        inputs.append(grpcclient.InferInput("TRUNCATION", list(values.shape), "FP32"))
        inputs[1].set_data_from_numpy(values)
    return client.infer(model, inputs).as_numpy(output)


def test_latents_step_live(ensemble_server):
    with grpcclient.InferenceServerClient(ensemble_server.grpc_url) as client:
        seeds = [0, 5, 2**40]
        assert np.array_equal(_infer(client, "bamsgan_latents", "LATENT", seeds), seeds_to_latents(seeds, Z_DIM))
        truncated = _infer(client, "bamsgan_latents", "LATENT", seeds, [0.5, 1.0, 2.0])
        assert np.array_equal(truncated, seeds_to_latents(seeds, Z_DIM, [0.5, 1.0, 2.0]))
        with pytest.raises(InferenceServerException, match="SEED must be non-negative, got -3"):
            _infer(client, "bamsgan_latents", "LATENT", [1, -3])


def test_ensemble_live_matches_the_served_model(ensemble_server, triton_server):
    seeds = [5, 9, 2, 77]
    with grpcclient.InferenceServerClient(ensemble_server.grpc_url) as ensemble_client, grpcclient.InferenceServerClient(
        triton_server.grpc_url
    ) as served_client:
        for truncation in (None, [0.5, 0.7, 1e30, 2.0]):
            from_ensemble = _infer(ensemble_client, "bamsgan", "IMAGE", seeds, truncation)
            assert np.array_equal(from_ensemble, _infer(served_client, "bamsgan", "IMAGE", seeds, truncation))
        with pytest.raises(InferenceServerException, match="TRUNCATION must not be NaN"):
            _infer(ensemble_client, "bamsgan", "IMAGE", [1], [np.nan])


def test_ensemble_walks_like_the_served_model(ensemble_server, triton_server):
    from clients.generate import seed_inputs
    from training.latents import seed_pairs_to_latents, walk_mixes

    seeds, seeds_b, mix = np.full(5, 3), np.full(5, 17), walk_mixes(5)
    with grpcclient.InferenceServerClient(ensemble_server.grpc_url) as ensemble_client, grpcclient.InferenceServerClient(
        triton_server.grpc_url
    ) as served_client:
        latents = ensemble_client.infer("bamsgan_latents", seed_inputs(seeds, None, seeds_b, mix)).as_numpy("LATENT")
        assert np.array_equal(latents, seed_pairs_to_latents(seeds, seeds_b, mix, Z_DIM))
        walk = seed_inputs(seeds, np.full(5, 0.7), seeds_b, mix)
        assert np.array_equal(ensemble_client.infer("bamsgan", walk).as_numpy("IMAGE"), served_client.infer("bamsgan", walk).as_numpy("IMAGE"))
        with pytest.raises(InferenceServerException, match="SEED_B and MIX go together"):
            ensemble_client.infer("bamsgan", seed_inputs(seeds[:1], None, seeds_b[:1], None))


def test_tuning_variants_are_valid_configs():
    """`make tune-serving` (clients/tune_serving.py) serves config.pbtxt with a few settings changed: each must parse."""
    from clients.tune_serving import VARIANTS, variant_config

    text = (REPO_ROOT / "model_repository/bamsgan/config.pbtxt").read_text()
    for name, settings in VARIANTS.items():
        config = text_format.Parse(variant_config(text, settings), model_config_pb2.ModelConfig())
        batching = config.dynamic_batching
        assert batching.max_queue_delay_microseconds == settings.get("max_queue_delay_microseconds", 0), name
        assert list(batching.preferred_batch_size) == settings.get("preferred_batch_size", []), name
        assert config.instance_group[0].count == settings.get("count", 1), name
        assert config.parameters["ort_threads"].string_value == str(settings.get("ort_threads", 0)), name
        assert tensors(config.input) == SERVED_INPUTS, name  # the rest untouched
