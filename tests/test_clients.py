"""clients/: generate, benchmark and perf_analyzer against a real Triton server (conftest.triton_server)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from clients import benchmark, generate, perf_analyzer
from clients.endpoints import EndpointPool
from training.data.images import image_grid

REPO_ROOT = Path(__file__).resolve().parent.parent


def direct_request(url: str, seeds, truncation=None) -> np.ndarray:
    """Faces straight from tritonclient, one request, no clients/ code."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 1)
    seed_input = grpcclient.InferInput("SEED", list(seeds.shape), "INT64")
    seed_input.set_data_from_numpy(seeds)
    inputs = [seed_input]
    if truncation is not None:
        values = np.full(seeds.shape, truncation, np.float32)
        truncation_input = grpcclient.InferInput("TRUNCATION", list(values.shape), "FP32")
        truncation_input.set_data_from_numpy(values)
        inputs.append(truncation_input)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer("bamsgan", inputs).as_numpy("IMAGE")


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def closed_port() -> int:
    from serving.launcher import free_ports

    return free_ports(1)[0]  # bound and released: nothing listens there


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- arguments


def test_seed_arguments():
    assert generate.seeds_argument("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    for text, message in [("5-3", "runs backwards"), ("x", "not a seed"), ("", "no seeds"), ("-1", "non-negative"),
                          (str(2**63), "at most|integers")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            generate.seeds_argument(text)


def test_truncation_arguments():
    assert generate.truncation_argument("0.7") == pytest.approx(0.7)
    assert math.isinf(generate.truncation_argument("inf"))
    for text, message in [("0", "positive"), ("-1", "positive"), ("nan", "NaN"), ("abc", "must be a number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            generate.truncation_argument(text)


def test_bad_arguments_exit_2_with_a_message(capsys, tmp_path):
    for argv, message in [(["--seeds", "5-3", "--out", "x.png"], "runs backwards"),
                          (["--truncation", "0", "--out", "x.png"], "positive"),
                          ([], "nothing to write")]:
        with pytest.raises(SystemExit) as exit_info:
            generate.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--out", str(tmp_path), "--batch-sizes", "0,4"])
    assert "positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--out", str(tmp_path), "--min-requests", "0"])
    assert "--min-requests >= 1" in capsys.readouterr().err


def test_request_faces_validates_before_connecting():
    with pytest.raises(ValueError, match="non-negative"):
        generate.request_faces("127.0.0.1:1", [3, -1])
    with pytest.raises(ValueError, match="positive"):
        generate.request_faces("127.0.0.1:1", [3, 4], truncation=-0.5)


def test_retries_only_retryable_errors():
    calls = []

    def failing(status):
        def call():
            calls.append(status)
            raise InferenceServerException(msg="boom", status=status)
        return call

    with pytest.raises(InferenceServerException):
        generate.call_with_retries(failing("StatusCode.UNAVAILABLE"), retries=2, backoff_s=0)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(InferenceServerException):
        generate.call_with_retries(failing("StatusCode.INVALID_ARGUMENT"), retries=2, backoff_s=0)
    assert len(calls) == 1


# ---------------------------------------------------------------- generate against the live server


def test_generate_writes_grid_and_per_seed_pngs(triton_server, tmp_path, capsys):
    seeds = [0, 1, 2, 5, 300]
    grid_path, each_dir = tmp_path / "grid.png", tmp_path / "each"
    code = generate.main(["--url", triton_server.grpc_url, "--seeds", "0-2,5,300", "--truncation", "0.8",
                          "--out", str(grid_path), "--each", str(each_dir)])
    assert code == 0, capsys.readouterr().err
    expected = direct_request(triton_server.grpc_url, seeds, truncation=0.8)
    assert np.array_equal(read_png(grid_path), image_grid(expected))
    assert sorted(p.name for p in each_dir.iterdir()) == [f"seed-{s:06d}.png" for s in seeds]
    for seed, image in zip(seeds, expected):
        assert np.array_equal(read_png(each_dir / f"seed-{seed:06d}.png"), image)


def test_request_faces_chunks_in_seed_order(triton_server):
    seeds = [9, 3, 7, 1, 4, 8, 2]
    images = generate.request_faces(triton_server.grpc_url, seeds, batch_size=3)  # requests of 3, 3, 1
    assert images.dtype == np.uint8 and images.shape == (7, 64, 64, 3)
    assert np.array_equal(images, direct_request(triton_server.grpc_url, seeds))


def test_generate_server_down_is_one_clear_line(tmp_path):
    port = closed_port()
    result = subprocess.run(
        [sys.executable, "-m", "clients.generate", "--url", f"127.0.0.1:{port}", "--seeds", "0-3", "--out", str(tmp_path / "x.png"),
         "--retries", "1", "--timeout", "5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot reach Triton at 127.0.0.1:{port} (UNAVAILABLE) — is `make serve` running?"
    assert "Traceback" not in result.stderr and not (tmp_path / "x.png").exists()


def test_generate_unknown_model(triton_server, tmp_path, capsys):
    code = generate.main(["--url", triton_server.grpc_url, "--model", "nope", "--seeds", "0", "--out", str(tmp_path / "x.png")])
    assert code == 1
    assert stderr_line(capsys) == f"error: model 'nope' is not served at {triton_server.grpc_url}; served models: bamsgan"


# ---------------------------------------------------------------- benchmark


def check_result(row: dict, batch_size: int) -> None:
    assert row["batch_size"] == batch_size
    assert row["requests"] > 0 and row["images_per_s"] > 0 and row["requests_per_s"] > 0
    assert row["images_per_s"] == pytest.approx(row["requests_per_s"] * batch_size)
    assert row["errors"] == 0 and row["error_kinds"] == []
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    server = row["server"]
    assert server["requests"] > 0 and server["failures"] == 0
    assert server["avg_batch_size"] >= 1
    assert all(server[name] >= 0 for name in ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us"))
    assert 0 <= row["client_cpu"]


def test_benchmark_closed_loop_and_compare_raw(triton_server, tmp_path, capsys):
    out = tmp_path / "bench"
    code = benchmark.main(["--url", triton_server.grpc_url, "--out", str(out), "--batch-sizes", "1,4", "--concurrency", "1,2",
                           "--window", "1", "--warmup", "0.2", "--max-windows", "2", "--compare-raw", str(triton_server.repository)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    configs = [(r["batch_size"], r["concurrency"]) for r in report["results"]]
    assert configs == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for row in report["results"]:
        check_result(row, row["batch_size"])
        assert row["mode"] == "concurrency" and 1 <= row["windows"] <= 2
    assert report["max_batch_size"] == 256 and report["model_versions"] == ["1"]
    assert Path(report["raw"]["onnx"]) == triton_server.repository / "bamsgan" / "1" / "generator.onnx"
    assert [r["batch_size"] for r in report["raw"]["results"]] == [1, 4]
    assert all(r["images_per_s"] > 0 for r in report["raw"]["results"])
    assert [r["batch_size"] for r in report["served_vs_raw"]] == [1, 4] and all(r["ratio"] > 0 for r in report["served_vs_raw"])
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("batch_size,mode,concurrency")
    with Image.open(out / "latency_throughput.png") as plot:
        assert plot.size[0] > 400
    assert "served/raw" in printed and "p99 ms" in printed
    # The lone-request stall guard's figures, from a fresh run of 300 sequential one-seed requests (cache off here).
    lone = report["lone_requests"]
    assert lone["requests"] == benchmark.LONE_REQUESTS and lone["over_limit"] == 0 and 0 < lone["p50_ms"] <= lone["max_ms"]
    assert lone["c1_p99_ms"] > 0 and lone["c1_served_vs_raw"] > 0 and lone["c1_cache_lookups"] == 0
    assert f"lone requests ({benchmark.LONE_REQUESTS} sequential, one seed each)" in printed
    assert "batch 1, concurrency 1: p99" in printed and "(cache off)" in printed


def test_benchmark_open_loop_poisson(triton_server, tmp_path):
    out = tmp_path / "bench"
    code = benchmark.main(["--url", triton_server.grpc_url, "--out", str(out), "--batch-sizes", "2", "--no-concurrency",
                           "--rate", "20", "--window", "0.5", "--min-requests", "25", "--warmup", "0.2", "--max-windows", "1"])
    assert code == 0
    [row] = json.loads((out / "results.json").read_text())["results"]
    check_result(row, 2)
    # The 0.5 s window (~10 arrivals at 20/s) is stretched until 25 requests completed in it.
    assert row["requests"] >= 25 and row["duration_s"] >= 0.5
    assert row["mode"] == "rate" and row["rate"] == 20 and row["concurrency"] is None
    assert row["send_lag_p99_ms"] is not None


def test_benchmark_raises_a_dead_load_instead_of_waiting(triton_server):
    """A load task that dies of an unexpected error must surface at once, not leave the window
    waiting forever for --min-requests completions."""
    import asyncio

    import tritonclient.grpc.aio as aioclient

    class BrokenClient:
        async def infer(self, *args, **kwargs):
            raise RuntimeError("client bug")

    args = benchmark.parse_args(["--url", triton_server.grpc_url, "--out", "unused", "--window", "0.2", "--warmup", "0",
                                 "--max-windows", "2"])

    async def drive():
        url = triton_server.grpc_url
        stats_client = aioclient.InferenceServerClient(url)
        with EndpointPool(url, "bamsgan") as pool:
            try:
                await asyncio.to_thread(pool.connect)
                config = benchmark.LoadConfig(1, "concurrency", 2)
                return await asyncio.wait_for(benchmark.run_config(config, pool, {url: [BrokenClient()]}, {url: stats_client},
                                                                   "bamsgan", benchmark.SeedCounter(), args, _NoBar()), timeout=30)
            finally:
                await stats_client.close()

    with pytest.raises(RuntimeError, match="client bug"):
        asyncio.run(drive())


class _NoBar:
    def set_postfix_str(self, text):
        pass


def test_benchmark_clear_errors(triton_server, tmp_path, capsys):
    assert benchmark.main(["--url", triton_server.grpc_url, "--out", str(tmp_path), "--model", "nope"]) == 1
    assert "model 'nope' is not served" in stderr_line(capsys)
    assert benchmark.main(["--url", triton_server.grpc_url, "--out", str(tmp_path), "--batch-sizes", "4,512"]) == 1
    assert stderr_line(capsys) == "error: batch sizes [512] exceed model 'bamsgan' max_batch_size 256"
    assert benchmark.main(["--url", triton_server.grpc_url, "--out", str(tmp_path), "--compare-raw", str(tmp_path)]) == 1
    assert "no version with generator.onnx" in stderr_line(capsys)


# ---------------------------------------------------------------- perf_analyzer


def test_perf_analyzer_locator_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("PERF_ANALYZER", raising=False)
    with pytest.raises(perf_analyzer.PerfAnalyzerNotFound, match=r"tritonclient\[grpc\]==" + perf_analyzer.TRITONCLIENT_VERSION.replace(".", r"\.")):
        perf_analyzer.locate(candidates=[tmp_path / "perf_analyzer"], download=False)
    env = {**os.environ, "PERF_ANALYZER": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "clients.perf_analyzer", "--locate"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: PERF_ANALYZER={tmp_path / 'missing'} is not an executable file"


def test_perf_analyzer_seed_data(tmp_path):
    requests = perf_analyzer.write_seed_data(tmp_path / "seeds.json", batch_size=4)
    entries = json.loads((tmp_path / "seeds.json").read_text())["data"]
    assert len(entries) == requests * 4
    assert [e["SEED"]["content"] for e in entries] == [[i] for i in range(len(entries))]  # distinct seeds
    assert all(e["SEED"]["shape"] == [1] for e in entries)


@pytest.fixture
def installed_perf_analyzer(monkeypatch):
    """The perf_analyzer that `make setup` installs (no override, no download); skip without it."""
    monkeypatch.delenv("PERF_ANALYZER", raising=False)
    try:
        return perf_analyzer.locate(download=False)
    except perf_analyzer.PerfAnalyzerNotFound as error:
        pytest.skip(f"perf_analyzer not available offline: {error}")


def test_perf_analyzer_runs_beside_ours(triton_server, installed_perf_analyzer, tmp_path, capsys):
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"results": [{"batch_size": 2, "mode": "concurrency", "concurrency": 1, "images_per_s": 100.0,
                                             "p50_ms": 1.0, "p99_ms": 2.0, "stable": True}]}))
    code = perf_analyzer.main(["--url", triton_server.grpc_url, "--out", str(tmp_path / "pa"), "--batch-sizes", "2",
                               "--concurrency", "1", "--min-requests", "20", "--max-windows", "3", "--ours", str(ours)])
    printed = capsys.readouterr().out
    assert code == 0
    [row] = json.loads((tmp_path / "pa" / "pa_results.json").read_text())["results"]
    assert row["batch_size"] == 2 and row["concurrency"] == 1 and row["images_per_s"] > 0
    assert "ours/PA" in printed


def test_perf_analyzer_pairs_alternate_with_ours(triton_server, installed_perf_analyzer, tmp_path, capsys):
    code = perf_analyzer.main(["--url", triton_server.grpc_url, "--out", str(tmp_path / "pa"), "--batch-sizes", "2",
                               "--concurrency", "1", "--warmup", "0.2", "--min-requests", "10",
                               "--max-windows", "3", "--pairs", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    [pair] = json.loads((tmp_path / "pa" / "pa_results.json").read_text())["pairs"]
    assert (pair["batch_size"], pair["concurrency"]) == (2, 1)
    assert len(pair["ours_images_per_s"]) == len(pair["pa_images_per_s"]) == len(pair["ratios"]) == 2
    assert pair["ratios"] == pytest.approx([a / b for a, b in zip(pair["ours_images_per_s"], pair["pa_images_per_s"])])
    assert pair["ratio_median"] == pytest.approx(sum(pair["ratios"]) / 2) and all(r > 0 for r in pair["ratios"])
    assert "pair ratios" in printed and pair["ours_errors"] == 0
    # Every pair keeps its own perf_analyzer log (the second pair ran perf_analyzer first).
    assert all((tmp_path / "pa" / f"pa_b2_c1_pair{i}.log").is_file() for i in (1, 2))


def test_perf_analyzer_timeout_keeps_what_was_measured(triton_server, installed_perf_analyzer, tmp_path, capsys):
    code = perf_analyzer.main(["--url", triton_server.grpc_url, "--out", str(tmp_path / "pa"), "--batch-sizes", "2",
                               "--concurrency", "1", "--pa-timeout", "0.01"])
    assert code == 1
    assert "ran past --pa-timeout" in capsys.readouterr().err
    report = json.loads((tmp_path / "pa" / "pa_results.json").read_text())
    assert report["results"] == [] and "ran past --pa-timeout" in report["error"]


def test_perf_analyzer_pairs_exclude_ours(tmp_path, capsys):
    ours = tmp_path / "ours.json"
    ours.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        perf_analyzer.main(["--out", str(tmp_path), "--pairs", "2", "--ours", str(ours)])
    assert exit_info.value.code == 2 and "do not combine it with --ours" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        perf_analyzer.main(["--out", str(tmp_path), "--min-requests", "0"])
    assert exit_info.value.code == 2 and "--min-requests >= 1" in capsys.readouterr().err
