"""clients/gpu_check.py (make gpu-check) and the engine timing it uses (export/benchmark.py), on CPU.

The GPU paths themselves run only on a GPU box. Here: the refusal without a GPU (for real: CI has
none), argument handling, the skip logic against this machine's real environment (no TensorRT, no
ONNX Runtime CUDA provider) and a missing tritonserver, the budget, and every part's own logic run
for real with `--device cpu` and tiny sizes: attention shapes, the training-step subprocess, the
generator engines with parity, and serving through a real Triton server with clients.benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clients import gpu_check
from export import benchmark

from .conftest import REPO_ROOT

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
TINY = ["--device", "cpu", "--channels", "8", "--attention-batch", "2", "--repeats", "2", "--warmup", "1",
        "--train-steps", "1", "--batch-sizes", "1,4", "--seconds", "0.1", "--windows", "2", "--threads", "1",
        "--serve-batch-sizes", "4", "--serve-concurrency", "1", "--serve-window", "0.3"]


def tiny_args(tmp_path, *extra):
    return gpu_check.parse_args(TINY + ["--out", str(tmp_path / "report"), "--repository", str(tmp_path / "empty"), *extra])


# ---------------------------------------------------------------- refusal and arguments


@needs_no_gpu
def test_refuses_without_a_gpu_in_one_line(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "clients.gpu_check", "--out", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["--parts", "kernel,warp"], "unknown part"),
    (["--budget", "0"], "must be positive"),
    (["--batch-sizes", "1,0"], "positive integers"),
    (["--engines", "pytorch,warp-drive"], "--engines: unknown"),
    (["--ckpt", "/nonexistent/checkpoint.pt"], "no file at"),
    (["--repeats", "0"], "must be positive"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(precious)])
    assert "is not a directory" in capsys.readouterr().err
    assert precious.read_text() == "mine"


def test_parts_follow_the_report_order():
    assert gpu_check.parse_args(["--parts", "serving,kernel"]).parts == ["kernel", "serving"]
    assert gpu_check.parse_args([]).parts == list(gpu_check.PARTS)


def test_quick_lowers_the_defaults_and_explicit_flags_win():
    args = gpu_check.parse_args(["--quick", "--windows", "7"])
    assert args.budget == gpu_check.QUICK["budget"] and args.repeats == gpu_check.QUICK["repeats"] and args.windows == 7
    assert gpu_check.parse_args([]).budget == gpu_check.DEFAULTS["budget"]


def test_clock_shares_the_time_left_among_the_parts_to_run():
    clock = gpu_check.Clock(480, list(gpu_check.PARTS))
    share = clock.part_deadline("kernel") - time.monotonic()
    assert share == pytest.approx(480 * gpu_check.PART_CAPS["kernel"] / sum(gpu_check.PART_CAPS[p] for p in gpu_check.PARTS), abs=1)
    alone = gpu_check.Clock(100, ["serving"])  # a subset shares the whole budget
    assert alone.part_deadline("serving") - time.monotonic() == pytest.approx(100, abs=1)
    assert gpu_check.Clock(10, ["training"]).too_little_for("training")  # below its minimum


# ---------------------------------------------------------------- skip logic


def test_engines_missing_on_this_machine_name_the_piece():
    import onnxruntime as ort

    from export.tensorrt_build import missing_requirements

    assert set(benchmark.missing_engines("cpu")) == {"pytorch-bf16-cudagraphs", "tensorrt-fp16"}
    on_cuda = benchmark.missing_engines("cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in on_cuda["ort-fp32"] and "onnxruntime-gpu" in on_cuda["ort-fp16"]
    if missing_requirements() is not None:
        assert on_cuda["tensorrt-fp16"] == missing_requirements()


def test_serving_engine_warning_without_tensorrt_and_ort_cuda():
    import onnxruntime as ort

    from export.tensorrt_build import missing_requirements

    assert gpu_check.serving_engine_missing("cpu") is None
    if missing_requirements() is None or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a GPU serving engine")
    warning = gpu_check.serving_engine_missing("cuda")
    assert "onnxruntime-gpu" in warning and "TensorRT" in warning and "on the CPU" in warning


def test_serving_skips_without_tritonserver(tmp_path, monkeypatch):
    from serving import launcher

    def not_found():
        raise launcher.LaunchError("tritonserver not found: install the Python requirements")

    monkeypatch.setattr(launcher, "find_tritonserver", not_found)  # this machine has one: take it away
    record = gpu_check.part_serving(tiny_args(tmp_path), time.monotonic() + 60)
    assert record == {"status": "skipped", "reason": "tritonserver not found: install the Python requirements"}


def test_serving_skips_with_numpy_2(monkeypatch):
    monkeypatch.setattr(np, "__version__", "2.5.2")
    if gpu_check.module_missing("tritonclient"):
        pytest.skip("tritonclient is not installed")
    assert "needs numpy < 2" in gpu_check.serving_missing()


def test_kernel_part_skips_on_cpu(tmp_path):
    record = gpu_check.part_kernel(tiny_args(tmp_path), time.monotonic() + 60)
    assert record["status"] == "skipped" and "CUDA device" in record["reason"]


def test_spent_budget_skips_every_part(tmp_path, capsys):
    assert gpu_check.main(TINY + ["--out", str(tmp_path / "r"), "--budget", "0.001"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["status"] for r in report["parts"].values()] == ["skipped"] * 5
    assert all("budget spent" in r["reason"] for r in report["parts"].values())


# ---------------------------------------------------------------- parsing other tools' output


def test_pytest_counts_from_summary_lines():
    assert gpu_check.pytest_counts("....\n16 passed, 13 skipped in 30.02s\n") == \
        {"passed": 16, "failed": 0, "skipped": 13, "error": 0}
    assert gpu_check.pytest_counts("== 2 failed, 27 passed, 1 error in 41.5s ==") == \
        {"passed": 27, "failed": 2, "skipped": 0, "error": 1}
    assert gpu_check.pytest_counts("collected nothing") == {"passed": 0, "failed": 0, "skipped": 0, "error": 0}


def test_last_json_line_skips_other_output():
    text = 'training step ...\n{"sdpa": {"images_per_s": 10.0}}\nnot json {\n'
    assert gpu_check.last_json_line(text) == {"sdpa": {"images_per_s": 10.0}}
    assert gpu_check.last_json_line("no summary\n{broken") is None


def test_served_engine_from_the_server_log():
    log = ("I1129 model.py:143] bamsgan: ONNX Runtime generator.onnx with ['CUDAExecutionProvider', 'CPUExecutionProvider']\n"
           "I1129 server.cc:1] started\n")
    assert gpu_check.served_engine(log) == "ONNX Runtime generator.onnx with ['CUDAExecutionProvider', 'CPUExecutionProvider']"
    assert gpu_check.served_engine("nothing") is None


# ---------------------------------------------------------------- engine timing (export.benchmark)


def test_throughput_has_n_windows_and_a_spread():
    figure = benchmark.throughput(lambda x: x * 2, np.zeros((4, 8), np.float32), seconds=0.05, warmup=1, windows=3)
    assert figure["windows"] == 3 and 0 < figure["min"] <= figure["images_per_s"] <= figure["max"]


def test_benchmark_bad_arguments(capsys):
    for argv, message in [(["--engines", "warp"], "--engines: unknown"), (["--batch-sizes", "a"], "integers"),
                          (["--windows", "0"], "positive")]:
        with pytest.raises(SystemExit):
            benchmark.parse_args(argv)
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--device", "cuda"])
        assert "CUDA is not available" in capsys.readouterr().err


def test_engines_past_the_deadline_are_skipped():
    from training.checkpoint import generator_from_checkpoint

    state = benchmark.fresh_state(4)
    results = benchmark.measure_engines(lambda: generator_from_checkpoint(state), ["pytorch", "ort-fp32"], [1], "cpu",
                                        seconds=0.05, windows=1,
                                        threads=1, deadline=time.monotonic() - 1, log=lambda line: None)
    assert {r["status"] for r in results.values()} == {"skipped"}
    assert all("budget spent" in r["reason"] for r in results.values())


# ---------------------------------------------------------------- the parts, for real on CPU


def test_dry_run_report_attention_and_generator(tmp_path, capsys):
    code = gpu_check.main(TINY + ["--out", str(tmp_path / "r"), "--parts", "attention,generator",
                                  "--engines", "pytorch,pytorch-bf16,ort-fp32,tensorrt-fp16"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["tool"] == "clients.gpu_check" and report["format_version"] == 1
    assert list(report["parts"]) == list(gpu_check.PARTS)
    parts = report["parts"]
    assert parts["kernel"]["status"] == parts["training"]["status"] == parts["serving"]["status"] == "skipped"
    assert parts["kernel"]["reason"] == "not asked for (--parts)"

    attention = parts["attention"]
    assert attention["status"] == "ok" and attention["impls"] == ["reference", "sdpa"] and "kernel skipped" in attention["note"]
    assert len(attention["records"]) == 4 * 2 * 2  # shapes x passes x impls
    assert {r["pass"] for r in attention["records"]} == {"forward", "forward+backward"}
    assert {(r["n"], r["channels"]) for r in attention["records"]} == {(256, 16), (1024, 8), (64, 32), (16, 64)}
    assert all(r["ms_min"] <= r["ms"] <= r["ms_max"] and r["repeats"] == 2 for r in attention["records"])

    generator = parts["generator"]
    assert generator["status"] == "ok" and generator["source"] == "fresh weights, channels=8"
    engines = generator["engines"]
    assert engines["tensorrt-fp16"] == {"status": "skipped", "reason": "TensorRT needs a CUDA device"}
    for name in ("pytorch", "pytorch-bf16", "ort-fp32"):
        assert engines[name]["status"] == "ok" and engines[name]["parity"]["passed"], name
        assert set(engines[name]["batches"]) == {"1", "4"} and engines[name]["batches"]["4"]["windows"] == 2
    assert engines["ort-fp32"]["parity"]["worst"]["uint8_max_diff"] <= 1
    # Engines take turns window by window: per-window ratios to eager fp32 PyTorch, 1 for itself.
    assert engines["pytorch"]["batches"]["4"]["x"] == {"median": 1.0, "min": 1.0, "max": 1.0, "n": 2}
    assert engines["ort-fp32"]["batches"]["1"]["x"]["n"] == 2 and engines["ort-fp32"]["batches"]["1"]["x"]["median"] > 0

    table = (tmp_path / "r" / "report.txt").read_text()
    assert table.strip() in out and "[generator]" in table and "[attention]" in table
    assert not list((tmp_path / "r").glob(".*partial"))


def test_training_part_runs_bench_training(tmp_path):
    record = gpu_check.part_training(tiny_args(tmp_path), time.monotonic() + 300)
    assert record["status"] == "ok", record
    (config,) = record["configs"]
    assert config["config"] == "sdpa" and config["images_per_s"] > 0 and config["peak_mib"] > 0
    assert (tmp_path / "report" / "logs" / "training-sdpa.log").is_file()


def test_serving_part_serves_a_fresh_export(tmp_path):
    args = tiny_args(tmp_path)
    if gpu_check.serving_missing():
        pytest.skip(gpu_check.serving_missing())
    record = gpu_check.part_serving(args, time.monotonic() + 240)
    assert record["status"] == "ok", record
    assert record["source"].startswith("fresh export of fresh weights, channels=8")
    assert record["engine"].startswith("ONNX Runtime generator.onnx")
    assert record["raw_engine"] == "ONNX Runtime generator.onnx on CPUExecutionProvider"
    (ratio,) = record["served_vs_raw"]
    assert ratio["batch_size"] == 4 and ratio["served_images_per_s"] > 0 and ratio["raw_images_per_s"] > 0
    assert record["errors"] == 0


# ---------------------------------------------------------------- GPU peers (optional part)


def test_peers_are_optional_and_skipped_without_cuda_in_one_line(tmp_path, capsys):
    assert "peers" not in gpu_check.parse_args([]).parts
    assert gpu_check.parse_args(["--parts", "peers,kernel"]).parts == ["kernel", "peers"]
    assert gpu_check.main(TINY + ["--parts", "peers", "--out", str(tmp_path / "r"), "--budget", "1200"]) == 0
    record = json.loads((tmp_path / "r" / "report.json").read_text())["parts"]["peers"]
    assert record["status"] == "skipped" and "refuse to run without CUDA" in record["reason"]
    assert "peers" in capsys.readouterr().out


@needs_no_gpu
def test_gpu_peers_command_refuses_without_cuda_in_one_line(tmp_path):
    from clients import gpu_peers

    result = subprocess.run([sys.executable, "-m", "clients.gpu_peers", "--minutes", "1", "--out", str(tmp_path / "peers")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"gpu-peers: {gpu_peers.NO_CUDA}"
    assert not (tmp_path / "peers").exists()


def test_peer_sample_grids_are_cut_into_their_faces(tmp_path):
    """stylegan2-pytorch's 8x8 grids (torchvision's layout: 2 px padding) back into 64 faces each."""
    from PIL import Image

    from clients.gpu_peers import GRID_PADDING, GRID_TILES, PeersError, cut_grids

    faces = np.random.default_rng(0).integers(0, 256, (GRID_TILES**2, 64, 64, 3), dtype=np.uint8)
    side = GRID_TILES * (64 + GRID_PADDING) + GRID_PADDING
    grid = np.zeros((side, side, 3), np.uint8)
    for index, face in enumerate(faces):
        y, x = GRID_PADDING + (index // GRID_TILES) * (64 + GRID_PADDING), GRID_PADDING + (index % GRID_TILES) * (64 + GRID_PADDING)
        grid[y : y + 64, x : x + 64] = face
    Image.fromarray(grid).save(tmp_path / "0-ema.png")
    cut = cut_grids([tmp_path / "0-ema.png"], tmp_path / "faces")
    assert len(cut) == GRID_TILES**2
    assert all(np.array_equal(np.asarray(Image.open(path)), face) for path, face in zip(cut, faces))
    Image.fromarray(grid[:100]).save(tmp_path / "odd-ema.png")
    with pytest.raises(PeersError, match="not a 8x8 grid"):
        cut_grids([tmp_path / "odd-ema.png"], tmp_path / "faces")
