"""Replicas: `python -m serving.replicas` runs N real Triton servers; the clients spread requests
over them and fail over (clients.endpoints). The main case kills one replica's tritonserver with
SIGKILL in the middle of a request stream: every seed must still come back, byte for byte what a
single server answers."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from clients import endpoints, generate
from clients.endpoints import EndpointPool, TritonClientError
from serving.launcher import LaunchError, free_ports
from serving.replicas import PORT_STRIDE, Replicas, replica_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "bamsgan"


def closed_port() -> int:
    return free_ports(1)[0]  # bound and released: nothing listens there


def consecutive_free_ports(count: int) -> int:
    """A base port p with p .. p+count-1 all free right now, below the ephemeral range, so that no
    outgoing connection (ours or another test run's) takes one of them before the servers bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = random.randrange(10_000, max(10_001, low - count))
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def served_count(url: str) -> int:
    """Successful inferences of the model on one server (Triton's own statistics)."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(MODEL, as_json=True, client_timeout=5)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def processes_with(prefix: str) -> list[int]:
    """Live processes whose command line mentions `prefix` (a server's shared-memory prefix)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        if prefix.encode() in text and (cmdline.parent / "stat").read_text().split()[2] != "Z":
            found.append(int(cmdline.parent.name))
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- the replica set (a real CLI run)


@dataclass
class ReplicaSet:
    process: subprocess.Popen
    urls: list[str]
    pids: list[int]
    stdout: Path
    stderr: Path

    def err(self) -> str:
        return self.stderr.read_text()


@pytest.fixture(scope="module")
def replica_set(tmp_path_factory, published_version):
    """`python -m serving.replicas --replicas 2` on consecutive free ports, serving the session's tiny version."""
    work = tmp_path_factory.mktemp("replicas")
    repository = work / "model_repository"
    shutil.copytree(published_version.version_dir.parent, repository / MODEL)
    base = consecutive_free_ports(2 * PORT_STRIDE)  # replica 0: HTTP base, gRPC base+1, metrics base+2; replica 1: +3
    stdout, stderr = work / "replicas.out", work / "replicas.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.replicas", "--replicas", "2", "--model-repository", str(repository),
             "--http-port", str(base), "--grpc-port", str(base + 1), "--metrics-port", str(base + 2), "--log-dir", str(work)],
            cwd=REPO_ROOT, stdout=out, stderr=err,
        )
    try:
        def ready():
            if process.poll() is not None:
                raise AssertionError(f"serving.replicas exited ({process.returncode}): {stderr.read_text()}")
            return "clients: --url" in stdout.read_text()
        wait_for(ready, 120, "both replicas")
        lines = stdout.read_text().splitlines()
        urls = next(line for line in lines if line.startswith("clients: --url ")).split()[-1].split(",")
        pids = [int(line.split(" pid ")[1].split()[0]) for line in lines if line.strip().startswith("replica ")]
        assert urls == [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 1 + PORT_STRIDE}"] and len(pids) == 2
        yield ReplicaSet(process, urls, pids, stdout, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_replica_killed_mid_stream_costs_retries_not_seeds(replica_set, triton_server):
    seeds = list(range(300))  # 150 requests of 2 seeds
    reference = generate.request_faces(triton_server.grpc_url, seeds)  # a single, separate server (2 requests)
    survivor, victim = replica_set.urls
    victim_pid = replica_set.pids[1]
    prefix = next(arg for arg in Path(f"/proc/{victim_pid}/cmdline").read_bytes().decode().split("\0")
                  if "shm-region-prefix-name=" in arg).split("=", 2)[-1]
    before = served_count(victim)
    killed = threading.Event()

    def kill_after_some_answers():
        # Mid-stream: once the victim has answered 10 of this stream's requests (its own statistics).
        try:
            wait_for(lambda: served_count(victim) - before >= 10, 60, "the victim to answer")
        finally:
            os.kill(victim_pid, signal.SIGKILL)
            killed.set()

    notes = []
    killer = threading.Thread(target=kill_after_some_answers)
    with EndpointPool([survivor, victim], MODEL, timeout=30, retries=3, log=notes.append) as pool:
        killer.start()
        images = generate.faces_from_pool(pool, seeds, batch_size=2, concurrency=4)
        killer.join()
        answered = {e.url: e.answered for e in pool.endpoints}
        resent = pool.resent

    assert killed.is_set()
    assert images.dtype == np.uint8 and images.shape == (300, 64, 64, 3)
    assert np.array_equal(images, reference)  # every seed, in order, byte for byte
    assert answered[victim] > 0 and answered[survivor] > 0 and answered[victim] + answered[survivor] == 150
    assert resent >= 1  # the requests in flight on the victim were sent again (and nothing else failed)
    assert [note for note in notes if "is down" in note] == [
        f"warning: replica {victim} is down (UNAVAILABLE); 1 of 2 live, its requests go to the others"]

    # The replica CLI reports the death on one line, keeps the other serving, and leaves nothing behind.
    line = wait_for(lambda: [line for line in replica_set.err().splitlines() if "exited on its own" in line], 10,
                    "the death report")
    assert line == [f"error: replica 1 (gRPC {victim}) exited on its own (code -9); 1 of 2 still serving; "
                    f"its log: {replica_set.stderr.parent / 'replica-1.log'}"]
    wait_for(lambda: not processes_with(prefix), 10, "the dead replica's Python backend stubs to be ended")
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))
    assert served_count(survivor) > 0 and replica_set.process.poll() is None

    # Ctrl-C / SIGTERM stops the rest; exit 1 because a replica had died.
    replica_set.process.send_signal(signal.SIGTERM)
    assert replica_set.process.wait(60) == 1
    assert replica_set.stdout.read_text().splitlines()[-1] == "Triton replicas stopped."
    assert not Path(f"/proc/{replica_set.pids[0]}").exists()  # reaped, not a zombie


# ---------------------------------------------------------------- a dead or silent replica at start


def test_dead_replica_at_start_is_skipped(triton_server, tmp_path, capsys):
    dead = f"127.0.0.1:{closed_port()}"
    seeds = [5, 1, 9, 2, 7]
    notes = []
    images = generate.request_faces([dead, triton_server.grpc_url], seeds, batch_size=2, log=notes.append)
    assert np.array_equal(images, generate.request_faces(triton_server.grpc_url, seeds))
    assert notes == [f"warning: skipping replica {dead}: cannot reach Triton at {dead} (UNAVAILABLE) — is `make serve` "
                     f"running?; using 1 of 2"]
    # The CLI: the same one line on stderr, exit 0, every face written.
    code = generate.main(["--url", f"{triton_server.grpc_url},{dead}", "--seeds", "0-3", "--each", str(tmp_path / "each")])
    captured = capsys.readouterr()
    assert code == 0 and len(list((tmp_path / "each").iterdir())) == 4
    assert [line for line in captured.err.splitlines() if line.strip() and "requests" not in line] == [
        f"warning: skipping replica {dead}: cannot reach Triton at {dead} (UNAVAILABLE) — is `make serve` running?; using 1 of 2"]
    assert f"requests per replica: {triton_server.grpc_url} " in captured.out and f"{dead} 0" in captured.out


def test_silent_replica_does_not_hang(triton_server):
    """A port that accepts TCP but never speaks gRPC: the probe times out and the replica is skipped."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_url = f"127.0.0.1:{silent.getsockname()[1]}"
        notes = []
        with EndpointPool([silent_url, triton_server.grpc_url], MODEL, probe_timeout_s=1.0, log=notes.append) as pool:
            assert pool.connect()["max_batch_size"] == 256
            assert [e.up for e in pool.endpoints] == [False, True]
            images = generate.faces_from_pool(pool, [3, 4])
        assert np.array_equal(images, generate.request_faces(triton_server.grpc_url, [3, 4]))
        # gRPC gives up on the handshake (UNAVAILABLE) or the probe's deadline comes first: either way one line.
        assert notes in ([f"warning: skipping replica {silent_url}: Triton at {silent_url} did not answer a health probe "
                          f"within 1 s (DEADLINE_EXCEEDED); using 1 of 2"],
                         [f"warning: skipping replica {silent_url}: cannot reach Triton at {silent_url} (UNAVAILABLE) "
                          f"— is `make serve` running?; using 1 of 2"])


def test_replica_that_comes_up_later_is_brought_back(triton_server, tmp_path):
    """Skipped while dead; the prober finds it once it serves the same version, and it takes requests."""
    from serving.launcher import TritonServer

    grpc_port, http_port, metrics_port = free_ports(3)
    late = f"127.0.0.1:{grpc_port}"
    notes = []
    with EndpointPool([triton_server.grpc_url, late], MODEL, probe_interval_s=0.2, log=notes.append) as pool:
        pool.connect()
        assert [e.up for e in pool.endpoints] == [True, False]
        with TritonServer(triton_server.repository, grpc_port, http_port, metrics_port, log_path=tmp_path / "late.log",
                          cache_mib=0, poll_seconds=0):
            wait_for(lambda: pool.endpoints[1].up, 30, "the prober to bring the replica back")
            images = generate.faces_from_pool(pool, range(40), batch_size=2, concurrency=4)
            assert pool.endpoints[1].answered > 0 and pool.endpoints[0].answered > 0
    assert np.array_equal(images, generate.request_faces(triton_server.grpc_url, range(40)))
    assert notes[0].startswith(f"warning: skipping replica {late}: ") and notes[1:] == [f"replica {late} is back"]


def test_every_replica_dead_is_one_clear_line(tmp_path, capsys):
    dead = [f"127.0.0.1:{port}" for port in free_ports(2)]
    code = generate.main(["--url", ",".join(dead), "--seeds", "0-3", "--out", str(tmp_path / "grid.png"), "--retries", "1"])
    assert code == 1 and not (tmp_path / "grid.png").exists()
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot reach Triton at any of {dead[0]} (UNAVAILABLE), {dead[1]} (UNAVAILABLE) "
                   f"— is `make serve` running?")


# ---------------------------------------------------------------- malformed endpoints


@pytest.mark.parametrize("url, message", [
    ("localhost", "'localhost' is not HOST:PORT"),
    ("localhost:8001,", "empty endpoint"),
    ("a:8001,,b:8004", "empty endpoint"),
    ("a:0", "port must be 1-65535"),
    ("a:70000", "port must be 1-65535"),
    ("a:80x1", "'a:80x1' is not HOST:PORT"),
    ("http://a:8000", "is not gRPC"),
    ("a:8001,grpc://a:8001", "a:8001 is listed twice"),
])
def test_malformed_endpoint_is_an_argparse_error(url, message, capsys, tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match=message) as error:
        endpoints.endpoints_argument(url)
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--url", url, "--seeds", "0", "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: ") and "Traceback" not in "\n".join(err)  # argparse's usage, then one error line
    assert [line for line in err if "error" in line] == [f"python -m clients.generate: error: argument --url: {error.value}"]
    with pytest.raises(ValueError, match=message):
        generate.request_faces(url, [1])  # before connecting anywhere


def test_endpoint_parsing():
    assert endpoints.parse_endpoints("grpc://h1:8001, h2:8004") == ["h1:8001", "h2:8004"]
    assert endpoints.parse_endpoints(["[::1]:8001", "10.0.0.2:9"]) == ["[::1]:8001", "10.0.0.2:9"]


# ---------------------------------------------------------------- the policy


def error(status: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


def test_error_classes():
    assert endpoints.classify(error("UNAVAILABLE", "failed to connect to all addresses")) == endpoints.DOWN
    assert endpoints.classify(error("DEADLINE_EXCEEDED")) == endpoints.DOWN
    assert endpoints.classify(error("RESOURCE_EXHAUSTED")) == endpoints.BUSY
    # Triton's queue policy refuses with UNAVAILABLE (tests/test_server_ops.py sees these from a real
    # server): the replica is up and busy, not down.
    for message in ("Exceeds maximum queue size", "Request timeout expired"):
        assert endpoints.classify(error("UNAVAILABLE", message)) == endpoints.BUSY
        assert "its queue is full" in endpoints.describe_error(error("UNAVAILABLE", message), "h:1", 60)
    for status in ("INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL"):
        assert endpoints.classify(error(status)) == endpoints.FATAL


def test_full_queue_is_backed_off_not_marked_down(triton_server):
    with EndpointPool(triton_server.grpc_url, MODEL, retries=3, backoff_s=0.01) as pool:
        pool.connect()
        calls = []

        def send(client):  # the server's queue is full twice, then it answers
            calls.append(client)
            if len(calls) <= 2:
                raise error("RESOURCE_EXHAUSTED")
            return client.is_server_ready(client_timeout=5)

        assert pool.call(send) is True
        assert len(calls) == 3 and pool.resent == 2 and pool.endpoints[0].up
    # The benchmark's setting: a full queue is a result to count, not to hide behind retries.
    with EndpointPool(triton_server.grpc_url, MODEL, retries=3, backoff_s=0.01, retry_busy=False) as pool:
        pool.connect()
        calls.clear()
        with pytest.raises(TritonClientError, match=r"failed the request \(RESOURCE_EXHAUSTED\)") as raised:
            pool.call(send)
        assert raised.value.status == "StatusCode.RESOURCE_EXHAUSTED"
        assert len(calls) == 1 and pool.resent == 0 and pool.endpoints[0].up


def test_bad_request_is_not_retried(triton_server):
    """A real INVALID_ARGUMENT from Triton (SEED as FP32): fails at once, replica stays up."""
    with EndpointPool(triton_server.grpc_url, MODEL, retries=3) as pool:
        pool.connect()
        seed = grpcclient.InferInput("SEED", [1, 1], "FP32")
        seed.set_data_from_numpy(np.zeros((1, 1), np.float32))
        with pytest.raises(TritonClientError, match=r"failed the request \(INVALID_ARGUMENT\)"):
            pool.call(lambda client: client.infer(MODEL, [seed], client_timeout=10))
        assert pool.resent == 0 and pool.endpoints[0].up and pool.endpoints[0].failed == 1


def test_different_versions_are_refused(triton_server, tmp_path):
    """Replicas serving different versions would give different faces for a seed: a clear error."""
    from serving.launcher import TritonServer

    repository = tmp_path / "model_repository"
    shutil.copytree(triton_server.repository / MODEL, repository / MODEL, ignore=shutil.ignore_patterns("1"))
    shutil.copytree(triton_server.repository / MODEL / "1", repository / MODEL / "2")
    grpc_port, http_port, metrics_port = free_ports(3)
    with TritonServer(repository, grpc_port, http_port, metrics_port, log_path=tmp_path / "server.log", cache_mib=0,
                      poll_seconds=0) as other:
        with pytest.raises(TritonClientError, match=r"replicas serve different versions of 'bamsgan' .*\['1'\].*\['2'\]"):
            generate.request_faces([triton_server.grpc_url, other.grpc_url], [1, 2])


def test_async_driver_spreads_over_live_replicas(triton_server):
    """acall (the benchmark's driver): requests over aio clients, the dead replica skipped."""
    dead = f"127.0.0.1:{closed_port()}"
    seeds = np.arange(12)
    expected = generate.request_faces(triton_server.grpc_url, seeds)

    async def drive():
        with EndpointPool([triton_server.grpc_url, dead], MODEL, retries=2) as pool:
            await asyncio.to_thread(pool.connect)
            clients = {url: aioclient.InferenceServerClient(url, channel_args=endpoints.channel_args()) for url in pool.urls}
            try:
                async def one(seed):
                    result = await pool.acall(lambda endpoint: clients[endpoint.url].infer(
                        MODEL, generate.seed_inputs(np.array([seed])), client_timeout=10))
                    return result.as_numpy("IMAGE")[0]
                return np.stack(await asyncio.gather(*(one(s) for s in seeds)))
            finally:
                for client in clients.values():
                    await client.close()

    assert np.array_equal(asyncio.run(drive()), expected)


# ---------------------------------------------------------------- serving.replicas: bad input


def test_replica_ports_follow_each_other():
    assert replica_ports(3, 8001, 8000, 8002) == [(8001, 8000, 8002), (8004, 8003, 8005), (8007, 8006, 8008)]
    with pytest.raises(LaunchError, match="replicas' ports coincide"):
        replica_ports(2, 9001, 9004, 9002)  # replica 1's HTTP port would be 9007, its gRPC 9004: taken by replica 0's HTTP
    with pytest.raises(LaunchError, match="ports must be 1-65535"):
        replica_ports(2, 65533, 65532, 65534)


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "0"], "--replicas must be at least 1, got 0"),
    (["--replicas", "2", "--grpc-port", "9001", "--http-port", "9004", "--metrics-port", "9002"], "replicas' ports coincide"),
    (["--replicas", "2", "--model-repository", "/nonexistent/repo"], "does not exist"),
])
def test_replicas_cli_bad_input_is_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "serving.replicas", *argv], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr


def test_busy_port_of_a_later_replica_fails_before_any_starts(triton_server, tmp_path):
    """Replica 1's gRPC port is busy: a clear error before replica 0 spends seconds loading."""
    base = consecutive_free_ports(2 * PORT_STRIDE)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1 + PORT_STRIDE))
        busy.listen()
        replicas = Replicas(triton_server.repository, 2, grpc_port=base + 1, http_port=base, metrics_port=base + 2,
                            log_dir=tmp_path)
        with pytest.raises(LaunchError, match=rf"^replica 1: cannot use gRPC port {base + 4} on 127.0.0.1 "):
            replicas.start(timeout=60)
    assert all(server.process is None for server in replicas.servers)  # none was started


# ---------------------------------------------------------------- the benchmark over replicas


def test_benchmark_over_replicas_skips_a_dead_one(triton_server, tmp_path, capsys):
    import json

    from clients import benchmark

    dead = f"127.0.0.1:{closed_port()}"
    out = tmp_path / "bench"
    code = benchmark.main(["--url", f"{triton_server.grpc_url},{dead}", "--out", str(out), "--batch-sizes", "2",
                           "--concurrency", "2", "--window", "0.5", "--warmup", "0.1", "--min-requests", "10", "--max-windows", "1"])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    [row] = report["results"]
    assert row["errors"] == 0 and row["requests"] >= 10 and row["resent"] == 0 and row["server"]["requests"] >= 10
    assert report["url"] == f"{triton_server.grpc_url},{dead}"
    assert report["replicas"][dead] == {"answered": 0, "up": False} and report["replicas"][triton_server.grpc_url]["answered"] > 0
    assert [line for line in captured.err.splitlines() if line.startswith("warning")] == [
        f"warning: skipping replica {dead}: cannot reach Triton at {dead} (UNAVAILABLE) — is `make serve` running?; using 1 of 2"]
