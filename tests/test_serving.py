"""The served model over gRPC (a real tritonserver, see conftest.triton_server) and `python -m serving`."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, MAX_BATCH_SIZE, Z_DIM
from training.latents import seeds_to_latents

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH = MAX_BATCH_SIZE


def make_inputs(seeds, truncation=None, seed_dtype=np.int64, seed_shape=None, truncation_shape=None):
    seeds = np.asarray(seeds, dtype=seed_dtype)
    seeds = seeds.reshape(seed_shape if seed_shape is not None else (-1, 1))
    seed_input = grpcclient.InferInput("SEED", list(seeds.shape), {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32"}[seed_dtype])
    seed_input.set_data_from_numpy(seeds)
    inputs = [seed_input]
    if truncation is not None:
        values = np.asarray(truncation, dtype=np.float32)
        values = values.reshape(truncation_shape if truncation_shape is not None else (-1, 1))
        truncation_input = grpcclient.InferInput("TRUNCATION", list(values.shape), "FP32")
        truncation_input.set_data_from_numpy(values)
        inputs.append(truncation_input)
    return inputs


def generate(client, seeds, truncation=None, model="bamsgan") -> np.ndarray:
    result = client.infer(model, make_inputs(seeds, truncation), outputs=[grpcclient.InferRequestedOutput("IMAGE")])
    return result.as_numpy("IMAGE")


def local_onnx_images(onnx_path, seeds, truncation=None) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["image"], {"latent": seeds_to_latents(seeds, Z_DIM, truncation)})[0]


# ---------------------------------------------------------------- images


def test_images_follow_the_contract(grpc_client):
    images = generate(grpc_client, [0, 1, 2])
    assert images.dtype == np.uint8
    assert images.shape == (3, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS)
    assert len({image.tobytes() for image in images}) == 3, "different seeds must give different faces"


def test_same_seed_same_bytes_across_calls_and_batch_compositions(grpc_client):
    alone = generate(grpc_client, [5])[0]
    assert np.array_equal(generate(grpc_client, [5])[0], alone)
    assert np.array_equal(generate(grpc_client, [9, 5, 2])[1], alone)
    assert np.array_equal(generate(grpc_client, list(range(64)))[5], alone)
    assert np.array_equal(generate(grpc_client, [5, 5])[1], alone)


def test_concurrent_requests_are_deterministic(triton_server):
    seeds = list(range(40))
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        reference = generate(client, seeds)

    def worker(offset):
        # Each thread its own client; requests of different sizes get batched together by Triton.
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            chunk = seeds[offset : offset + 1 + offset % 7]
            return offset, generate(client, chunk)

    with ThreadPoolExecutor(8) as pool:
        for offset, images in pool.map(worker, [i % len(seeds) for i in range(48)]):
            expected = reference[offset : offset + len(images)]
            assert np.array_equal(images, expected), f"seeds from {offset}: served bytes changed under concurrency"


def test_matches_the_local_generator(grpc_client, triton_server):
    import torch

    from training.data.images import to_uint8_nhwc

    seeds = [0, 3, 17, 123456789, 2**62]
    served = generate(grpc_client, seeds)
    # Same ONNX graph, same ONNX Runtime: identical bytes.
    assert np.array_equal(served, local_onnx_images(triton_server.onnx_path, seeds))
    # The torch generator: within export parity (rounding flips by 1 on a few pixels at most).
    with torch.no_grad():
        expected = to_uint8_nhwc(triton_server.generator(torch.from_numpy(seeds_to_latents(seeds, Z_DIM)))).numpy()
    difference = np.abs(served.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 1e-3


def test_truncation(grpc_client, triton_server):
    seeds = [5, 6, 7]
    plain = generate(grpc_client, seeds)
    truncated = generate(grpc_client, seeds, [0.5] * 3)
    assert not np.array_equal(plain, truncated), "TRUNCATION must change the images"
    assert np.array_equal(truncated, local_onnx_images(triton_server.onnx_path, seeds, [0.5] * 3))
    # A threshold nothing exceeds rejects nothing: identical to no truncation.
    assert np.array_equal(generate(grpc_client, seeds, [1e30] * 3), plain)
    # Per item: each seed gets its own threshold.
    mixed = generate(grpc_client, seeds, [0.5, 1e30, 0.5])
    assert np.array_equal(mixed[[0, 2]], truncated[[0, 2]])
    assert np.array_equal(mixed[1], plain[1])


def test_requests_with_and_without_truncation_interleaved(triton_server):
    # Triton batches only requests with the same inputs; model.py also handles mixed batches.
    seeds = [11, 12, 13, 14]
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        plain, truncated = generate(client, seeds), generate(client, seeds, [0.7] * 4)

    def worker(index):
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            return index, generate(client, seeds, [0.7] * 4 if index % 2 else None)

    with ThreadPoolExecutor(6) as pool:
        for index, images in pool.map(worker, range(24)):
            assert np.array_equal(images, truncated if index % 2 else plain)


def test_model_metadata_and_config_show_the_contract(grpc_client):
    metadata = grpc_client.get_model_metadata("bamsgan", as_json=True)
    inputs = {item["name"]: (item["datatype"], item["shape"]) for item in metadata["inputs"]}
    outputs = {item["name"]: (item["datatype"], item["shape"]) for item in metadata["outputs"]}
    assert inputs == {"SEED": ("INT64", ["-1", "1"]), "TRUNCATION": ("FP32", ["-1", "1"]),
                      "SEED_B": ("INT64", ["-1", "1"]), "MIX": ("FP32", ["-1", "1"])}
    assert outputs == {"IMAGE": ("UINT8", ["-1", "64", "64", "3"])}
    config = grpc_client.get_model_config("bamsgan").config
    assert config.max_batch_size == MAX_BATCH
    assert config.HasField("dynamic_batching")
    assert [item.name for item in config.input if item.optional] == ["TRUNCATION", "SEED_B", "MIX"]
    assert grpc_client.is_model_ready("bamsgan", "1")


# ---------------------------------------------------------------- bad input

BAD_REQUESTS = {
    # name: (inputs, expected gRPC status, words the message must contain; a tuple: one of them)
    "seed-fp32": (lambda: make_inputs([1, 2], seed_dtype=np.float32), "INVALID_ARGUMENT", ["SEED", "FP32", "INT64"]),
    "seed-int32": (lambda: make_inputs([1, 2], seed_dtype=np.int32), "INVALID_ARGUMENT", ["SEED", "INT32", "INT64"]),
    "seed-shape-n-by-2": (lambda: make_inputs([1, 2, 3, 4], seed_shape=(2, 2)), "INVALID_ARGUMENT", ["shape", "SEED", "[-1,1]"]),
    "seed-shape-flat": (lambda: make_inputs([1, 2], seed_shape=(2,)), "INVALID_ARGUMENT", ["shape", "SEED", "[-1,1]"]),
    "seed-negative": (lambda: make_inputs([4, -3, 7]), "INVALID_ARGUMENT", ["SEED must be non-negative, got -3"]),
    # Triton 2.41 passes an empty request to model.py; 2.51's core refuses it first, with its own words.
    "empty": (lambda: make_inputs([], seed_shape=(0, 1)), "INVALID_ARGUMENT",
              [("SEED is empty", "input byte size mismatch for input 'SEED'")]),
    "batch-over-max": (lambda: make_inputs(range(MAX_BATCH + 1)), "INVALID_ARGUMENT", [f"batch-size must be <= {MAX_BATCH}"]),
    "truncation-nan": (lambda: make_inputs([1, 2], [0.5, np.nan]), "INVALID_ARGUMENT", ["TRUNCATION must not be NaN"]),
    "truncation-negative": (lambda: make_inputs([1, 2], [0.5, -1.0]), "INVALID_ARGUMENT", ["TRUNCATION must be positive", "-1"]),
    "truncation-zero": (lambda: make_inputs([1, 2], [0.0, 1.0]), "INVALID_ARGUMENT", ["TRUNCATION must be positive", "0"]),
    "truncation-fewer": (lambda: make_inputs([1, 2, 3], [0.5]), "INVALID_ARGUMENT", ["batch size does not match"]),
    "truncation-more": (lambda: make_inputs([1, 2], [0.5, 0.5, 0.5]), "INVALID_ARGUMENT", ["batch size does not match"]),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(grpc_client, case):
    make, status, words = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("bamsgan", make())
    assert raised.value.status() == f"StatusCode.{status}"
    for word in words:
        alternatives = word if isinstance(word, tuple) else (word,)
        assert any(one in raised.value.message() for one in alternatives), f"{case}: {raised.value.message()!r} lacks {word!r}"
    assert generate(grpc_client, [1]).shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "model, version, words",
    [("no_such_model", "", ["unknown model", "no_such_model"]), ("bamsgan", "7", ["unknown model", "version 7"])],
)
def test_unknown_model_or_version(grpc_client, model, version, words):
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer(model, make_inputs([1]), model_version=version)
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert all(word in raised.value.message() for word in words), raised.value.message()


def _execution_and_inference_counts(client):
    stats = client.get_inference_statistics("bamsgan", as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0)), int(stats["inference_stats"]["success"].get("count", 0))


def test_good_requests_batched_with_bad_ones_still_succeed(triton_server):
    """Bad requests that pass Triton's own checks reach model.py inside a dynamic batch with good ones.

    A 256-seed request occupies the model instance first, so the following requests queue and
    Triton hands them to execute() together; each bad one must fail alone. Triton batches only
    requests with the same set of inputs, so there are two groups: without and with TRUNCATION.
    """
    requests = [
        ([21, 22], None), ([-5], None), ([26, 27, 28], None),
        ([23], [0.5]), ([24, 25], [1.0, np.nan]), ([29], [2.0]),
    ]  # fmt: skip
    bad = {1: "SEED must be non-negative, got -5", 4: "TRUNCATION must not be NaN"}
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        reference = {i: generate(client, *request) for i, request in enumerate(requests) if i not in bad}
        for attempt in range(5):
            executions_before, _ = _execution_and_inference_counts(client)
            results, done = {}, threading.Event()

            def callback(index, result, error):
                results[index] = (result, error)
                if len(results) == len(requests) + 1:
                    done.set()

            client.async_infer("bamsgan", make_inputs(range(MAX_BATCH)), functools.partial(callback, "blocker"))
            for index, (seeds, truncation) in enumerate(requests):
                client.async_infer("bamsgan", make_inputs(seeds, truncation), functools.partial(callback, index))
            assert done.wait(60), "requests did not complete"
            executions = _execution_and_inference_counts(client)[0] - executions_before

            assert results["blocker"][1] is None
            for index in range(len(requests)):
                result, error = results[index]
                if index in bad:
                    assert error is not None and error.status() == "StatusCode.INVALID_ARGUMENT"
                    assert bad[index] in error.message()
                else:
                    assert error is None, f"good request {index} failed next to bad ones: {error}"
                    assert np.array_equal(result.as_numpy("IMAGE"), reference[index])
            # The blocker, then each group of three in one execute() call.
            if executions <= 3:
                return
        pytest.fail(f"the requests were never dynamically batched (last try: {executions} executions for 7 requests)")


def test_metrics_endpoint(triton_server, grpc_client):
    generate(grpc_client, [1])
    text = urllib.request.urlopen(triton_server.metrics_url, timeout=10).read().decode()
    assert 'nv_inference_request_success{model="bamsgan",version="1"}' in text


# ---------------------------------------------------------------- python -m serving


def _serve(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "serving", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        **kwargs,
    )


def _ports():
    from serving.launcher import free_ports

    grpc_port, http_port, metrics_port = free_ports(3)
    return ["--grpc-port", grpc_port, "--http-port", http_port, "--metrics-port", metrics_port]


def _assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_launcher_busy_port(triton_server):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = _ports()
        ports[1] = busy
        result = _serve("--model-repository", triton_server.repository, *ports)
    _assert_one_line_error(result, f"gRPC port {busy}", "--grpc-port")


def test_launcher_missing_repository(tmp_path):
    result = _serve("--model-repository", tmp_path / "nowhere", *_ports())
    _assert_one_line_error(result, "does not exist", "make export")


def test_launcher_empty_repository(tmp_path):
    result = _serve("--model-repository", tmp_path, *_ports())
    _assert_one_line_error(result, "holds no model")


def test_launcher_model_without_version(tmp_path):
    (tmp_path / "bamsgan").mkdir()
    (tmp_path / "bamsgan" / "config.pbtxt").write_text((REPO_ROOT / "model_repository/bamsgan/config.pbtxt").read_text())
    result = _serve("--model-repository", tmp_path, *_ports())
    _assert_one_line_error(result, "'bamsgan'", "no exported version", "make export")


def test_launcher_model_that_fails_to_load(triton_server, tmp_path):
    # A version without latents.py (say, copied by hand): Triton's own reason comes first.
    shutil.copytree(triton_server.repository, tmp_path / "repository")
    (tmp_path / "repository" / "bamsgan" / "1" / "latents.py").unlink()
    result = _serve("--model-repository", tmp_path / "repository", *_ports())
    assert result.returncode == 2, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: tritonserver exited") and "failed to load 'bamsgan'" in first and "latents.py" in first
    assert "Traceback" not in result.stderr


def test_launcher_missing_tritonserver(triton_server, tmp_path):
    # As if nvidia-pytriton were not installed and no tritonserver were on PATH.
    code = "import sys; sys.modules['pytriton'] = None; from serving.__main__ import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code, "--model-repository", str(triton_server.repository), *map(str, _ports())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    _assert_one_line_error(result, "tritonserver not found")


def test_launcher_serves_until_sigterm(triton_server):
    ports = _ports()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(triton_server.repository), *map(str, ports)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            printed.append(line)
            if line.startswith("Ctrl-C to stop"):
                break
        output = "".join(printed)
        if "Ctrl-C to stop" not in output:
            process.kill()
            pytest.fail(f"python -m serving did not become ready:\n{output}{process.communicate()[1]}")
        grpc_url, metrics_url = f"127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[5]}/metrics"
        assert grpc_url in output and f"http://127.0.0.1:{ports[3]}" in output and metrics_url in output
        with grpcclient.InferenceServerClient(grpc_url) as client:
            assert generate(client, [3]).shape == (1, 64, 64, 3)
        assert "nv_inference_" in urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Triton stopped." in stdout
    assert re.search(r"Triton ready in [\d.]+ s", output)


def test_ready_waits_only_for_enabled_endpoints(triton_server, tmp_path):
    """Ready = every endpoint the server runs accepts connections; one switched off is not awaited."""
    from serving.launcher import TritonServer, free_ports

    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(triton_server.repository, grpc_port, http_port, metrics_port,
                          log_path=tmp_path / "tritonserver.log", extra_args=("--allow-metrics=false",))
    try:
        server.start(timeout=60)  # would wait all 60 s for the metrics port and fail if it were awaited
        with socket.create_connection(("127.0.0.1", http_port), timeout=5):
            pass  # HTTP was awaited: it listens now
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", metrics_port), timeout=1).close()
    finally:
        assert server.stop() == 0
