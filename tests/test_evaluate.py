"""python -m training.evaluate: every source path gives the same figures; bad input is one line and exit 2.

End to end: a tiny random checkpoint (conftest's `published_version`, exported by the real exporter)
is evaluated from its checkpoint, from its exported ONNX version (ONNX Runtime) and through a real
Triton server over gRPC (`triton_server`); the figures must agree within their stated uncertainty.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.evaluate import main

REPO_ROOT = Path(__file__).resolve().parent.parent
DETECTOR = REPO_ROOT.parent / "shared" / "models" / "lbpcascade_animeface.xml"
COUNT = 32
FAST = ["--real", "synthetic", "-n", str(COUNT), "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BAMSGAN_DETECTOR", raising=False)
    monkeypatch.delenv("BAMSGAN_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture
def checkpoint(published_version) -> Path:
    """The tiny checkpoint the session's published version was exported from."""
    path = published_version.version_dir.parent.parent.parent / "tiny-checkpoint.pt"
    assert path.is_file()
    return path


def run_main(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluation(argv, tmp_path, capsys, name: str) -> dict:
    out = tmp_path / f"{name}.json"
    code, stdout, stderr = run_main([*argv, *FAST, "--out", out], capsys)
    assert code == 0, stderr
    assert "swd" in stdout and f"N={COUNT} generated" in stdout
    return json.loads(out.read_text())


def assert_same_figures(first: dict, second: dict) -> None:
    for name, entry in first["metrics"].items():
        other = second["metrics"][name]
        if entry["value"] is None:
            assert other["value"] is None and other["unavailable"] == entry["unavailable"]
            continue
        tolerance = max(entry["uncertainty"], other["uncertainty"]) + 1e-9
        assert abs(entry["value"] - other["value"]) <= tolerance, (name, entry["value"], other["value"], tolerance)
        assert (entry["n_fake"], entry["n_real"]) == (other["n_fake"], other["n_real"]) == (COUNT, COUNT)


def test_checkpoint_version_and_served_model_give_the_same_figures(checkpoint, published_version, triton_server, tmp_path, capsys):
    detector = ["--detector", DETECTOR] if DETECTOR.is_file() else []
    from_checkpoint = evaluation(["--checkpoint", checkpoint, *detector], tmp_path, capsys, "checkpoint")
    from_version = evaluation(["--version", published_version.version_dir, *detector], tmp_path, capsys, "version")
    from_server = evaluation(["--url", triton_server.grpc_url, *detector], tmp_path, capsys, "server")
    assert from_checkpoint["source"]["kind"] == "checkpoint" and from_server["source"]["kind"] == "server"
    assert from_version["source"]["step"] == from_checkpoint["source"]["step"] == 1234
    assert from_checkpoint["real"]["count"] == COUNT and from_checkpoint["real"]["source"] == "synthetic"
    for name in ("fid", "kid"):  # no weights here: reported unavailable, never estimated
        assert from_checkpoint["metrics"][name]["value"] is None
    assert_same_figures(from_checkpoint, from_version)
    assert_same_figures(from_checkpoint, from_server)


def test_run_directory_writes_its_evaluation_json(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "checkpoint-latest.pt")
    code, stdout, stderr = run_main(["--run", run, "--real", "synthetic", "-n", COUNT, "--metrics", "sharpness,diversity", "--no-progress"], capsys)
    assert code == 0, stderr
    result = json.loads((run / f"evaluation-n{COUNT}.json").read_text())
    assert result["source"]["kind"] == "run" and set(result["metrics"]) == {"sharpness", "diversity"}
    assert stdout.count("N=32 generated") == 2
    assert not list(run.glob(".*partial"))


def test_small_real_set_and_training_data_are_warned(tmp_path, capsys):
    from tests.conftest import tiny_checkpoint_state
    from training.checkpoint import save_checkpoint

    state = tiny_checkpoint_state()
    state["config"] = {"data": "synthetic", "seed": 0}
    path = save_checkpoint(tmp_path / "trained-on-synthetic.pt", state)
    code, stdout, stderr = run_main(
        ["--checkpoint", path, "--real", "synthetic", "--real-seed", 0, "--real-count", 8, "-n", 16, "--metrics", "sharpness",
         "--out", tmp_path / "small.json", "--no-progress"], capsys)
    assert code == 0, stderr
    assert "training data" in stderr and "fewer than N=16" in stderr
    result = json.loads((tmp_path / "small.json").read_text())
    assert result["metrics"]["sharpness"]["n_real"] == 8 and result["real"]["training_data"] is True
    # The default real set is the training data's kind, drawn from a held-out seed: no warning.
    code, _, stderr = run_main(["--checkpoint", path, "-n", 8, "--metrics", "sharpness", "--out", tmp_path / "held-out.json", "--no-progress"], capsys)
    assert code == 0 and "training data" not in stderr


def bad_input(argv, capsys, expected: str) -> None:
    code, stdout, stderr = run_main([*argv, "--no-progress"], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "never.json"
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    bad_input(["--run", empty_run, *FAST, "--out", out], capsys, "has no checkpoint")
    bad_input(["--run", tmp_path / "no-such-run", *FAST, "--out", out], capsys, "no run directory")
    bad_input(["--run", "", *FAST, "--out", out], capsys, "no run directory given")
    bad_input(["--checkpoint", tmp_path / "missing.pt", *FAST, "--out", out], capsys, "no checkpoint at")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 half a file")
    bad_input(["--checkpoint", truncated, *FAST, "--out", out], capsys, "truncated or not a PyTorch checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    bad_input(["--checkpoint", foreign, *FAST, "--out", out], capsys, "not a BaMSGAN checkpoint")
    bad_input(["--version", tmp_path, *FAST, "--out", out], capsys, "not an exported model version")
    assert not out.exists()


def test_bad_files_and_data_are_one_line_errors(checkpoint, tmp_path, capsys):
    out = tmp_path / "never.json"
    source = ["--checkpoint", checkpoint]
    bad_input([*source, *FAST, "--inception-weights", tmp_path / "missing.pth", "--out", out], capsys, "no Inception weights file")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 half a file")
    bad_input([*source, *FAST, "--inception-weights", truncated, "--out", out], capsys, "truncated or not a PyTorch weights file")
    bad_input([*source, *FAST, "--detector", tmp_path / "missing.xml", "--out", out], capsys, "no face detector file")
    bad_input([*source, "--real", tmp_path / "no-data", "-n", 8, "--out", out], capsys, "cannot load the real faces")
    bad_input([*source, *FAST, "--metrics", "swd,is"], capsys, "unknown metric")
    assert not out.exists()
    user_file = tmp_path / "notes.json"
    user_file.write_text('{"mine": true}')
    bad_input([*source, *FAST, "--out", user_file], capsys, "not an earlier evaluation")
    assert user_file.read_text() == '{"mine": true}'


def test_unreachable_server_is_a_one_line_error(tmp_path, capsys):
    from serving.launcher import free_ports

    (port,) = free_ports(1)
    bad_input(["--url", f"localhost:{port}", *FAST, "--timeout", 5, "--out", tmp_path / "never.json"], capsys, "cannot reach Triton")
    bad_input(["--url", f"localhost:{port}", "-n", 8], capsys, "--real")  # a server does not say what it trained on
    bad_input(["--url", "localhost", *FAST, "--out", tmp_path / "never.json"], capsys, "is not HOST:PORT")
    assert not (tmp_path / "never.json").exists()


def test_command_line_exit_code_and_single_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--real", "synthetic"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no checkpoint at {tmp_path / 'missing.pt'}"]
