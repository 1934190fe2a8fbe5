"""A lone client against the repository's own config.pbtxt (the lone-request stall), on a real tritonserver.

With a queue policy in config.pbtxt, Triton's dynamic batcher missed the wake-up for a request
that arrived while the instance was still returning from the previous one and slept out its idle
500 ms: a lone client waited ~500 ms on many requests instead of ~2 ms. Nothing caught it, because
every load test ran at concurrency >= 16 or with the response cache answering. These are
functional checks (a 500 ms stall against a 250 ms limit, ~1 ms normal), not timing benchmarks.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import generate
from clients.benchmark import LONE_LIMIT_MS, LONE_REQUESTS, sequential_latencies
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "model_repository" / "bamsgan" / "config.pbtxt"


def test_the_served_config_is_the_repository_config(triton_server):
    # The guard below means something only if the server runs the tracked config.pbtxt, cache off.
    served = (triton_server.repository / "bamsgan" / "config.pbtxt").read_text()
    assert served == CONFIG.read_text()
    assert triton_server.server.cache_mib == 0


def test_sequential_one_seed_requests_never_stall(triton_server):
    latencies = sequential_latencies(triton_server.grpc_url, count=LONE_REQUESTS, first_seed=900_000)
    slow = [(index, round(float(ms))) for index, ms in enumerate(latencies) if ms > LONE_LIMIT_MS]
    assert len(latencies) == LONE_REQUESTS
    assert not slow, (f"{len(slow)} of {LONE_REQUESTS} lone requests took > {LONE_LIMIT_MS} ms (request, ms): {slow[:10]}; "
                      f"median {np.median(latencies):.1f} ms. A queue policy in config.pbtxt? (see its dynamic_batching comment)")


def test_config_has_no_queue_policy():
    # Any of these turns off the batcher's prefetching in Triton 2.41-2.51: the stall above.
    text = re.sub(r"#.*", "", CONFIG.read_text())
    for setting in ("default_queue_policy", "priority_queue_policy", "priority_levels", "max_queue_size"):
        assert setting not in text, setting


def occupy_instance(url: str, done: threading.Event, requests: int = 4, seeds: int = 256) -> grpcclient.InferenceServerClient:
    """Big requests in the background: they hold the one instance, so the next request queues behind
    them. Returns once they are sent; `done` is set when every one has answered."""
    client = grpcclient.InferenceServerClient(url)
    client.is_server_live()  # connected before the requests go
    answered = []

    def callback(result, error):
        answered.append(error)
        if len(answered) == requests:
            done.set()

    for index in range(requests):
        inputs = generate.seed_inputs(np.arange(seeds, dtype=np.int64) + 5_000_000 + 1000 * index)
        client.async_infer("bamsgan", inputs, callback, outputs=[grpcclient.InferRequestedOutput("IMAGE")], client_timeout=120)
    time.sleep(0.02)  # arrived
    return client


def wait_and_close(client, done: threading.Event) -> None:
    done.wait(120)
    client.close()


def test_a_deadline_shorter_than_the_queue_wait_is_deadline_exceeded(triton_server, capsys):
    """The overload bound without a queue policy is the client's deadline: a clear error, then service as usual."""
    done = threading.Event()
    busy = occupy_instance(triton_server.grpc_url, done)
    try:
        attempts = []
        while not done.is_set() and len(attempts) < 20:  # 4 x 256 seeds take >> 0.1 s on any CPU; retry if not yet queued
            out = triton_server.repository.parent / f"never-{len(attempts)}.png"  # an early success may write its own
            code = generate.main(["--url", triton_server.grpc_url, "--seeds", "7", "--timeout", "0.1", "--retries", "0",
                                  "--out", str(out)])
            attempts.append((code, capsys.readouterr(), out))
            if code != 0:
                break
    finally:
        wait_and_close(busy, done)
    code, (_, err), out = attempts[-1]
    assert code == 1, attempts
    lines = err.strip().splitlines()
    assert lines[-1] == (f"error: Triton at {triton_server.grpc_url} did not answer within 0.1 s (DEADLINE_EXCEEDED); "
                         f"raise --timeout"), err
    assert not out.exists()
    # The server keeps serving: the same seed at once, with an ordinary deadline.
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        result = client.infer("bamsgan", generate.seed_inputs(np.array([7])), client_timeout=60)
        assert result.as_numpy("IMAGE").shape == (1, 64, 64, 3)
        assert client.is_server_ready() and client.is_model_ready("bamsgan")


def test_deadline_exceeded_is_a_status_the_client_can_count(triton_server):
    """What a program sees (not only the CLI): the gRPC status DEADLINE_EXCEEDED."""
    done = threading.Event()
    busy = occupy_instance(triton_server.grpc_url, done)
    try:
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            with pytest.raises(InferenceServerException) as missed:
                for _ in range(20):
                    client.infer("bamsgan", generate.seed_inputs(np.array([8])), client_timeout=0.05)
                    if done.is_set():
                        break
    finally:
        wait_and_close(busy, done)
    assert str(missed.value.status()) == "StatusCode.DEADLINE_EXCEEDED"


def test_the_model_refuses_a_request_whose_deadline_has_passed(triton_server):
    """Overload bound on the server side: a request nobody waits for any more is refused, not computed."""
    from clients.endpoints import BUSY, DEADLINE_PARAMETER, classify, deadline_parameters

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        past = {DEADLINE_PARAMETER: int((time.time() - 5) * 1000)}
        with pytest.raises(InferenceServerException) as refused:
            client.infer("bamsgan", generate.seed_inputs(np.array([11])), client_timeout=60, parameters=past)
        assert str(refused.value.status()) == "StatusCode.UNAVAILABLE"
        assert "deadline passed while queued" in refused.value.message()
        assert classify(refused.value) == BUSY  # clients back off and retry; the replica is not marked down
        # A deadline in the future, and a malformed one, are served as usual.
        for parameters in (deadline_parameters(60), {DEADLINE_PARAMETER: "soon"}):
            result = client.infer("bamsgan", generate.seed_inputs(np.array([11])), client_timeout=60, parameters=parameters)
            assert result.as_numpy("IMAGE").shape == (1, 64, 64, 3)


def test_client_and_model_name_the_deadline_parameter_alike():
    # model.py is copied into versions and imports nothing from the project: its copy of the name is checked here.
    from clients.endpoints import DEADLINE_PARAMETER

    from clients.endpoints import DEADLINE_REFUSAL

    model_py = (REPO_ROOT / "serving" / "python_backend" / "model.py").read_text()
    assert f'DEADLINE_PARAMETER = "{DEADLINE_PARAMETER}"' in model_py
    assert f'DEADLINE_REFUSAL = "{DEADLINE_REFUSAL}' in model_py  # the client recognises the refusal by its start
