"""Day-two operations of the served model against real tritonservers:

the guarded HTTP endpoint, crash clean-up and restart, bursts, the response cache,
warm-up and new exports picked up under load. No timing assertions: statuses, counts, memory
bounds and what Triton's statistics API reports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.launcher import SHM_DIR, TritonServer, free_ports, group_members

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "bamsgan"


def seed_request(seeds):
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
    seed_input = grpcclient.InferInput("SEED", list(seeds.shape), "INT64")
    seed_input.set_data_from_numpy(seeds)
    return [seed_input]


def infer(client, seeds, **kwargs):
    result = client.infer(MODEL, seed_request(seeds), outputs=[grpcclient.InferRequestedOutput("IMAGE")], **kwargs)
    return result


def inference_stats(client) -> dict[str, int]:
    """Cumulative counts of Triton's statistics API, summed over the model's versions."""
    totals: dict[str, int] = {}
    for model in client.get_inference_statistics(MODEL, as_json=True)["model_stats"]:
        for key, value in model["inference_stats"].items():
            totals[key] = totals.get(key, 0) + int(value.get("count", 0))
        totals["executions"] = totals.get("executions", 0) + int(model.get("execution_count", 0))
    return totals


def settled_stats(client, before: dict[str, int], timeout: float = 5.0, **at_least: int) -> dict[str, int]:
    """Statistics once each counter has grown by `at_least` (or after `timeout`): Triton 2.51 sends a
    response before it counts it, so a read right after the last answer can miss the last one."""
    deadline = time.monotonic() + timeout
    while True:
        stats = inference_stats(client)
        if all(stats.get(key, 0) - before.get(key, 0) >= count for key, count in at_least.items()) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory, published_version):
    """A fresh server (nothing asked of it yet) with the repository's config.pbtxt and a 1 s repository poll."""
    repository = tmp_path_factory.mktemp("ops") / "model_repository"
    shutil.copytree(published_version.version_dir.parent, repository / MODEL)
    server = TritonServer(repository, *free_ports(3), log_path=repository.parent / "tritonserver.log", poll_seconds=1)
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- warm-up, cache


def test_warmup_runs_before_the_first_request(ops_server):
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        stats = inference_stats(client)
    # Nobody has asked anything yet: the one execution is config.pbtxt's model_warmup.
    assert stats["executions"] == 1 and stats["success"] == 1, stats
    assert stats.get("cache_hit", 0) == 0 and stats.get("cache_miss", 0) == 0, "warm-up must not fill the cache"


def test_response_cache_hits_repeated_seeds(ops_server):
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        before = inference_stats(client)
        first = infer(client, [424242]).as_numpy("IMAGE")
        again = [infer(client, [424242]).as_numpy("IMAGE") for _ in range(5)]
        pair = [infer(client, [7, 8]).as_numpy("IMAGE") for _ in range(2)]
        swapped = infer(client, [8, 7]).as_numpy("IMAGE")  # the key hashes the whole request
        after = settled_stats(client, before, executions=3)
    assert all(np.array_equal(image, first) for image in again), "a cached answer must be the computed bytes"
    assert np.array_equal(pair[0], pair[1]) and np.array_equal(swapped[::-1], pair[0])
    hits, misses = after["cache_hit"] - before.get("cache_hit", 0), after["cache_miss"] - before.get("cache_miss", 0)
    assert (hits, misses) == (6, 3), (hits, misses)
    assert after["executions"] - before["executions"] == 3, "only the misses run the model"


# ---------------------------------------------------------------- guarded HTTP, health


def test_oversized_http_request_is_refused_with_bounded_memory(ops_server):
    body = json.dumps({"inputs": [{"name": "SEED", "shape": [1, 1_000_000_000], "datatype": "INT64", "data": [1]}]})
    before = rss_bytes(ops_server.process.pid)
    for _ in range(4):
        request = urllib.request.Request(f"http://{ops_server.http_url}/v2/models/{MODEL}/infer", body.encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 403
    # Unguarded, each of these cost the server 4 GB for 20 s; guarded, nothing is allocated.
    assert rss_bytes(ops_server.process.pid) - before < 64 * 2**20
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        assert infer(client, [1]).as_numpy("IMAGE").shape == (1, 64, 64, 3)  # gRPC serves inference


def test_health_checks_over_http_and_grpc(ops_server):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}"):
        with urllib.request.urlopen(f"http://{ops_server.http_url}{path}", timeout=10) as response:
            assert response.status == 200, path
    with grpc.insecure_channel(ops_server.grpc_url) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_http_inference_can_be_opened(ops_server, tmp_path):
    server = TritonServer(ops_server.model_repository, *free_ports(3), log_path=tmp_path / "log", poll_seconds=0,
                          cache_mib=0, http_inference=True)
    body = json.dumps({"inputs": [{"name": "SEED", "shape": [1, 1], "datatype": "INT64", "data": [3]}]}).encode()
    with server:
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/{MODEL}/infer", body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
    assert answer["outputs"][0]["shape"] == [1, 64, 64, 3]


# ---------------------------------------------------------------- bursts


def test_a_burst_is_batched_and_answered_in_full(ops_server):
    """24 requests of 64 seeds at once: no queue policy refuses any (config.pbtxt says why it has none);
    the dynamic batcher runs them in fewer, larger executions, and the server serves again at once."""
    outcomes = []

    def callback(result, error):
        outcomes.append(error)

    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        before = inference_stats(client)
        seeds = np.arange(64) + 10_000
        for index in range(24):  # distinct requests: the cache must not answer them
            client.async_infer(MODEL, seed_request(seeds + 1000 * index), callback, client_timeout=120)
        deadline = time.monotonic() + 120
        while len(outcomes) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = settled_stats(client, before, success=24)
    assert outcomes == [None] * 24, {str(error) for error in outcomes}
    assert after["success"] - before["success"] == 24 and after.get("fail", 0) == before.get("fail", 0)
    assert after["executions"] - before["executions"] < 24, "queued requests run together (dynamic batching)"
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        assert infer(client, [5]).as_numpy("IMAGE").shape == (1, 64, 64, 3)


# ---------------------------------------------------------------- model update under load


def test_new_export_is_served_without_restart_under_load(ops_server):
    from export.repository import publish_version

    model_dir = ops_server.model_repository / MODEL
    version_one = model_dir / "1"
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        reference = infer(client, [77]).as_numpy("IMAGE")
    stop, answers, errors = threading.Event(), [], []

    def load(worker):
        with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
            while not stop.is_set():
                try:  # a deadline well beyond a batch's time: a request never waits forever
                    result = infer(client, [77], client_timeout=60)
                    answers.append((result.get_response().model_version, result.as_numpy("IMAGE")))
                except InferenceServerException as error:
                    errors.append(error)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # load running on version 1
        metadata = json.loads((version_one / "metadata.json").read_text())
        publish_version(model_dir, {"generator.onnx": version_one / "generator.onnx"}, metadata)  # same weights: same bytes
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(version == "2" for version, _ in answers[-50:]):
            time.sleep(0.2)
        time.sleep(1.0)  # and a while on version 2
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, f"{len(errors)} failed across the switch, first: {errors[0]}"
    served_by = {version for version, _ in answers}
    assert served_by == {"1", "2"}, served_by
    assert all(np.array_equal(image, reference) for _, image in answers)
    with grpcclient.InferenceServerClient(ops_server.grpc_url) as client:
        assert client.is_model_ready(MODEL, "2") and not client.is_model_ready(MODEL, "1")  # latest 1
        assert infer(client, [77]).get_response().model_version == "2"


# ---------------------------------------------------------------- crash clean-up


def launch_serving(published_version, tmp_path, stderr=subprocess.PIPE) -> tuple[subprocess.Popen, list[int]]:
    """`python -m serving` on a copy of the published version, on free ports: (launcher, ports)."""
    repository = tmp_path / "model_repository"
    shutil.copytree(published_version.version_dir.parent, repository / MODEL)
    ports = free_ports(3)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(repository), "--grpc-port", str(ports[0]),
         "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log-file", str(tmp_path / "tritonserver.log")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )
    return launcher, ports


def tritonserver_children(launcher: subprocess.Popen) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and _parent(int(p.name)) == launcher.pid and "tritonserver" in _cmdline(int(p.name))]


def test_sigkill_under_load_cleans_up_and_restarts_on_the_same_ports(published_version, tmp_path):
    launcher, ports = launch_serving(published_version, tmp_path)
    try:
        for line in launcher.stdout:
            if line.startswith("Ctrl-C to stop"):
                break
        server_pid = tritonserver_children(launcher)[0]
        prefix = _cmdline(server_pid).split("shm-region-prefix-name=")[1].split()[0]
        stubs = [pid for pid in group_members(server_pid) if pid != server_pid]
        assert stubs and list(SHM_DIR.glob(f"{prefix}*")), "a serving server has a stub and shared memory"

        url = f"127.0.0.1:{ports[0]}"
        stop = threading.Event()

        def load():
            with grpcclient.InferenceServerClient(url) as client:
                while not stop.is_set():
                    try:
                        infer(client, np.random.randint(0, 2**40, size=8), client_timeout=10)
                    except InferenceServerException:
                        pass  # the server is being killed

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(load)
            time.sleep(1.0)
            os.kill(server_pid, signal.SIGKILL)
            code = launcher.wait(timeout=60)
            stop.set()
        assert code == 1, launcher.stderr.read()
        assert "cleaned up" in launcher.stderr.read()
        assert group_members(server_pid) == [], "the dead server's stubs must be ended"
        assert not list(SHM_DIR.glob(f"{prefix}*")), "the dead server's shared memory must be removed"

        with TritonServer(tmp_path / "model_repository", *ports, log_path=tmp_path / "restart.log") as restarted:  # same ports, at once
            with grpcclient.InferenceServerClient(restarted.grpc_url) as client:
                assert infer(client, [3]).as_numpy("IMAGE").shape == (1, 64, 64, 3)
            prefix = restarted.shm_prefix
            group = restarted.process.pid
        assert group_members(group) == [] and not list(SHM_DIR.glob(f"{prefix}*")), "a clean stop leaves nothing"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("flag", ["--cache-mib", "--poll-seconds"])
def test_negative_cache_or_poll_is_a_one_line_error(tmp_path, flag):
    result = subprocess.run([sys.executable, "-m", "serving", "--model-repository", str(tmp_path), flag, "-1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cache size and poll interval must be >= 0")


def test_sigterm_during_start_up_stops_the_launcher(published_version, tmp_path):
    """A stop that arrives while the launcher still polls for readiness (a pod deleted as it starts, or a
    slow machine where the client sees "ready" first) ends it: it once swallowed the signal and served on."""
    launcher, _ = launch_serving(published_version, tmp_path, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not tritonserver_children(launcher):
            assert launcher.poll() is None and time.monotonic() < deadline, "tritonserver never started"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)  # tritonserver runs; the launcher is waiting for it to be ready
        output, _ = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert "Ctrl-C to stop" not in output and "Stopping Triton" in output, output
    assert launcher.returncode == 0, output


@pytest.mark.parametrize("module", ["serving.__main__", "serving.replicas"])
def test_a_stop_is_not_swallowed_by_start_up_polling(module):
    """The race above, made deterministic: start-up polls Triton inside `suppress(Exception)`, and the
    signal handler raises the stop wherever the launcher is, so the stop must not be an Exception."""
    import contextlib
    import importlib

    stop = importlib.import_module(module)._Stop
    with pytest.raises(stop):
        with contextlib.suppress(Exception):
            raise stop(signal.SIGTERM)
