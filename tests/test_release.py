"""The released generator (export/release.py): a tiny real run released, published on first use, served.

One tiny run (channels=4, 64 images, 2 epochs, metrics every epoch) is trained once for the module;
every test releases it into its own folder."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export import release
from export.release import CARD_NAME, MAX_WEIGHTS_BYTES, SAMPLES_NAME, WEIGHTS_NAME, ReleaseError, write_release
from export.repository import versions
from training.checkpoint import (
    LATEST, TRAINING_KEYS, CheckpointError, generator_from_checkpoint, load_checkpoint, require_training_state,
)
from training.constants import Z_DIM
from training.data.images import image_grid, to_uint8_nhwc
from training.latents import seeds_to_latents
from training.config import config_from_dict
from training.train import train

from .conftest import MODEL_NAME, REPO_ROOT
from .test_train import DATA, tiny_config

METRICS_COUNT = 16  # faces per evaluation in the tiny run and its --eval: seconds, not minutes


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release-run")
    run_dir = root / "tiny-run"
    train(tiny_config(root, epochs=2, metrics_every=1, metrics_count=METRICS_COUNT), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def released(run, tmp_path_factory) -> Path:
    """A release of the tiny run, made once; tests that change it make their own."""
    out = tmp_path_factory.mktemp("released")
    write_release(run, out, log=lambda line: None)
    return out


def faces(generator, seeds) -> np.ndarray:
    with torch.no_grad():
        return to_uint8_nhwc(generator(torch.from_numpy(seeds_to_latents(seeds, Z_DIM)))).numpy()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # A generous timeout: these exits come within seconds, but a loaded machine takes long over the imports.
    return subprocess.run([sys.executable, "-m", "export.release", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_release_is_g_ema_only_and_draws_the_runs_faces(run, released):
    state = load_checkpoint(released / WEIGHTS_NAME)
    assert not {"G", "D", "opt_G", "opt_D", "memory", "rng"} & set(state)
    assert (released / WEIGHTS_NAME).stat().st_size <= MAX_WEIGHTS_BYTES
    assert all(value.dtype == torch.float32 for value in state["G_ema"].values() if value.is_floating_point())
    source = load_checkpoint(run / LATEST)
    assert (state["epoch"], state["step"], state["model"], state["config"]) == (source["epoch"], source["step"], source["model"], source["config"])
    assert state["train_seconds"] == source["train_seconds"] > 0
    assert state["release"]["source_sha256"] == release.sha256_file(run / LATEST) and state["release"]["name"] == "tiny-run"

    seeds = np.arange(8)
    assert np.array_equal(faces(generator_from_checkpoint(state), seeds), faces(generator_from_checkpoint(source), seeds))
    grid = np.asarray(Image.open(released / SAMPLES_NAME))
    assert np.array_equal(grid, image_grid(faces(generator_from_checkpoint(state), np.arange(64))))
    assert not list(released.glob(".release-*"))  # the staging folder is gone


def test_training_cannot_resume_from_a_release(released, run):
    state = load_checkpoint(released / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"is a released generator \(G-EMA weights only\); it cannot be resumed — train from scratch"):
        require_training_state(state, released / WEIGHTS_NAME)
    assert require_training_state(load_checkpoint(run / LATEST), run / LATEST)  # a training checkpoint passes
    with pytest.raises(CheckpointError, match="only the EMA generator"):
        generator_from_checkpoint(state, ema=False)
    partial = {key: value for key, value in load_checkpoint(run / LATEST).items() if key != TRAINING_KEYS[-1]}
    with pytest.raises(CheckpointError, match=f"missing {TRAINING_KEYS[-1]}, so training cannot resume"):
        require_training_state(partial, "x.pt")


def test_an_existing_release_is_replaced_only_with_force_and_whole(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "released"
    write_release(run, out, name="first", log=lambda line: None)
    before = {name: (out / name).read_bytes() for name in (WEIGHTS_NAME, SAMPLES_NAME, CARD_NAME)}

    assert release.main(["--run", str(run), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [error] and "already holds a release" in error and "--force" in error
    assert {name: (out / name).read_bytes() for name in before} == before

    monkeypatch.setattr(release, "MAX_WEIGHTS_BYTES", 1000)  # fails once the new weights are written, before any rename
    with pytest.raises(ReleaseError, match="over the 0 MB a committed release may take"):
        write_release(run, out, force=True, name="too-big", log=lambda line: None)
    assert {name: (out / name).read_bytes() for name in before} == before
    monkeypatch.undo()

    assert not (out / release.PREVIOUS_NAME).exists()  # a first release has nothing to stand beside
    assert release.main(["--run", str(run), "--out", str(out), "--force", "--name", "second"]) == 0
    assert "MB (limit 10 MB)" in capsys.readouterr().out
    card = (out / CARD_NAME).read_text()
    assert load_checkpoint(out / WEIGHTS_NAME)["release"]["name"] == "second" and "released generator: second" in card
    # the replaced release's faces beside the new ones, same seeds: wider than both grids together
    assert f"![The previous release's faces beside these]({release.PREVIOUS_NAME})" in card and "release this one replaced, first (" in card
    grid_width = Image.open(out / SAMPLES_NAME).size[0]
    assert Image.open(out / release.PREVIOUS_NAME).size[0] > 2 * grid_width
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, release.PREVIOUS_NAME])  # no staging folder left behind


def evaluate(checkpoint: Path, out: Path) -> Path:
    from clients.evaluate import main as evaluate_main

    code = evaluate_main(["--checkpoint", str(checkpoint), "--count", str(METRICS_COUNT), "--real", DATA,
                          "--metrics", "swd,sharpness,diversity", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_model_card_names_the_command_epochs_data_and_metrics(run, tmp_path):
    evaluation = evaluate(run / LATEST, tmp_path / "eval.json")
    out = tmp_path / "released"
    write_release(run, out, eval_path=evaluation, log=lambda line: None)
    card = (out / CARD_NAME).read_text()
    options = json.loads((run / "options.json").read_text())
    state = load_checkpoint(out / WEIGHTS_NAME)

    assert release.shell_command(options["run"]["command"]) in card
    assert "| epochs | 2 (of 2 planned) |" in card and f"| steps | {state['step']:,} |" in card
    assert f"{state['train_seconds']:,.0f} s" in card and f"threads {options['run']['threads']}" in card
    assert release.sha256_file(out / WEIGHTS_NAME) in card and f"![G-EMA faces for seeds 0-63]({SAMPLES_NAME})" in card
    assert "| metric | value ± spread | real-vs-real floor | N generated | N real | spread |" in card
    swd = json.loads(evaluation.read_text())["metrics"]["swd"]
    assert f"| swd x1e3 (lower is better) | {swd['value']:.4g} ± {swd['uncertainty']:.2g} | – | {METRICS_COUNT} | {METRICS_COUNT} |" in card
    assert "No check for memorised training faces has been made." in card and not (out / release.MEMORISATION_NAME).exists()
    assert "| epoch | kimg | N |" in card and "\n| 2 | " in card  # the run's own metrics.jsonl
    if DATA != "synthetic":
        assert "research use only" in card and "> " in card and "anime-faces-mini-512.tar" in card
    assert release.shell_command("/x/training/train.py --data /d/shard-*.tar") == "python -m training.train --data '/d/shard-*.tar'"


def test_model_card_lists_every_sitting_of_a_resumed_run(run, tmp_path):
    """A run trained in two sittings (--resume) names both commands, the second with its starting epoch."""
    resumed = tmp_path / "resumed-run"
    shutil.copytree(run, resumed)
    config = load_checkpoint(run / LATEST)["config"]
    train(config_from_dict(config), resumed, resume=True, resume_epochs=3)
    out = tmp_path / "released"
    write_release(resumed, out, log=lambda line: None)
    card = (out / CARD_NAME).read_text()
    options = json.loads((resumed / "options.json").read_text())
    block = card.split("## Training")[1].split("```bash")[1].split("```")[0]
    commands = [release.shell_command(options["run"]["command"]), release.shell_command(options["run"]["resumes"][0]["command"])]
    assert [line.split("  # ")[0] for line in block.strip().splitlines()] == commands and "from epoch 2" in block
    assert "| epochs | 3 (of 3 planned) |" in card


def test_model_card_shows_fid_with_its_floor_precision_recall_and_the_memorisation_picture(run, tmp_path):
    from clients.evaluate import main as evaluate_main
    from tests.test_metrics import save_tiny_feature_network

    network = save_tiny_feature_network(tmp_path / "tiny-features-PLUMBING-TEST-ONLY.pt")  # the Inception contract, fast
    evaluation = tmp_path / "eval-fid.json"
    code = evaluate_main(["--checkpoint", str(run / LATEST), "--count", "100", "--real", "synthetic", "--inception-weights", str(network),
                          "--metrics", "fid,kid,precision,recall,memorisation", "--out", str(evaluation), "--no-progress"])
    assert code == 0
    out = tmp_path / "released"
    write_release(run, out, eval_path=evaluation, log=lambda line: None)
    card, figures = (out / CARD_NAME).read_text(), json.loads(evaluation.read_text())["metrics"]
    fid = figures["fid"]
    assert f"| fid (lower is better) | {fid['value']:.4g} ± {fid['uncertainty']:.2g} | {fid['floor']['value']:.4g} | 100 | 100 |" in card
    assert "| precision (higher is better) |" in card and "| recall (higher is better) |" in card
    assert "The real-vs-real floor: the same figure for 100 real faces" in card
    assert f"![closest (generated, training) pairs]({release.MEMORISATION_NAME})" in card and "Memorisation check" in card
    assert Image.open(out / release.MEMORISATION_NAME).size == Image.open(tmp_path / "eval-fid-memorisation.png").size
    assert "No check for memorised training faces" not in card
    assert load_checkpoint(out / WEIGHTS_NAME)["release"]["fid"] == {"value": fid["value"], "n_fake": 100, "n_real": 100,
                                                                      "floor": fid["floor"]["value"]}
    write_release(run, out, force=True, name="next", log=lambda line: None)  # the next release names this one by its FID
    assert f"release this one replaced, tiny-run (2 epochs, {release.data_name(DATA)}, FID {fid['value']:.1f} at N = 100), on the left" in (out / CARD_NAME).read_text()


def test_an_earlier_checkpoint_is_released_with_its_own_evaluation_only(run, tmp_path):
    older = sorted((run / "checkpoints").glob("epoch-*.pt"))[0]
    evaluation = evaluate(older, tmp_path / "eval-epoch-1.json")
    with pytest.raises(ReleaseError, match="evaluated epoch 1, step 4; the run's checkpoint is epoch 2, step 8"):
        write_release(run, tmp_path / "released", eval_path=evaluation, log=lambda line: None)
    assert not (tmp_path / "released").exists()

    live_g = json.loads(evaluation.read_text())
    live_g["source"]["weights"] = "G"  # as `python -m clients.evaluate --weights G` records it
    (tmp_path / "eval-live-G.json").write_text(json.dumps(live_g))
    with pytest.raises(ReleaseError, match="evaluated the G weights; the release holds G_ema"):
        write_release(run, tmp_path / "released", checkpoint=older, eval_path=tmp_path / "eval-live-G.json", log=lambda line: None)

    outside = shutil.copy(older, tmp_path / "elsewhere.pt")
    with pytest.raises(ReleaseError, match="is not a checkpoint of the run"):
        write_release(run, tmp_path / "released", checkpoint=outside, log=lambda line: None)

    assert release.main(["--run", str(run), "--checkpoint", str(older), "--eval", str(evaluation), "--out", str(tmp_path / "released")]) == 0
    state, card = load_checkpoint(tmp_path / "released" / WEIGHTS_NAME), (tmp_path / "released" / CARD_NAME).read_text()
    assert state["epoch"] == 1 and state["release"]["source_sha256"] == release.sha256_file(older)
    assert state["release"]["source_run"].endswith("tiny-run") and "| epochs | 1 (of 2 planned) |" in card
    assert "\n| 1 | " in card and "\n| 2 | " not in card  # the run's metrics up to the released epoch


def test_card_only_rebuilds_the_card_around_a_newer_evaluation_and_keeps_the_weights(run, tmp_path, capsys):
    """A release re-scored at another N: the card changes, the weights and samples do not; the run's records
    may come from a results folder that keeps them; an evaluation of other weights or another run's records is refused."""
    out = tmp_path / "released"
    write_release(run, out, name="first", log=lambda line: None)
    write_release(run, out, force=True, name="second", log=lambda line: None)  # so the card names what it replaced
    kept = {name: (out / name).read_bytes() for name in (WEIGHTS_NAME, SAMPLES_NAME, release.PREVIOUS_NAME)}
    records = tmp_path / "results-folder"  # what training/results keeps of a run: no checkpoints
    records.mkdir()
    for name in ("options.json", "stats.jsonl", "metrics.jsonl"):
        shutil.copy(run / name, records / name)

    rescored = evaluate(out / WEIGHTS_NAME, tmp_path / "eval-n24.json")  # the released file itself, METRICS_COUNT faces
    assert release.main(["--run", str(records), "--eval", str(rescored), "--out", str(out), "--card-only"]) == 0
    assert "rewrote" in capsys.readouterr().out
    card = (out / CARD_NAME).read_text()
    assert f"`{rescored.name}`" in card and f"{METRICS_COUNT} generated faces" in card
    assert "release this one replaced, first (" in card and release.sha256_file(out / WEIGHTS_NAME) in card
    assert release.shell_command(json.loads((run / "options.json").read_text())["run"]["command"]) in card
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert sorted(p.name for p in out.iterdir()) == sorted([*kept, CARD_NAME])  # no staging folder left behind

    before = card
    older = evaluate(sorted((run / "checkpoints").glob("epoch-*.pt"))[0], tmp_path / "eval-epoch-1.json")
    other = json.loads((records / "options.json").read_text())
    (records / "options.json").write_text(json.dumps({**other, "seed": other["seed"] + 1}))
    same_epoch_elsewhere = evaluate(run / LATEST, tmp_path / "eval-training-checkpoint.json")  # same epoch and step, not the release
    for eval_path, match in ((older, "evaluated epoch 1, step 4"), (same_epoch_elsewhere, "evaluate it with python -m clients.evaluate --checkpoint"),
                             (rescored, "holds the records of another run: seed")):
        with pytest.raises(ReleaseError, match=match):
            release.rewrite_card(records, eval_path, out, log=lambda line: None)
    with pytest.raises(ReleaseError, match="holds no release"):
        release.rewrite_card(run, rescored, tmp_path / "empty", log=lambda line: None)
    (tmp_path / "not-a-release").mkdir()
    shutil.copy(run / LATEST, tmp_path / "not-a-release" / WEIGHTS_NAME)
    with pytest.raises(ReleaseError, match="is a training checkpoint, not a release"):
        release.rewrite_card(run, rescored, tmp_path / "not-a-release", log=lambda line: None)
    assert (out / CARD_NAME).read_text() == before
    with pytest.raises(SystemExit):  # --card-only needs --eval: argparse's usage line, exit 2
        release.parse_args(["--run", str(run), "--card-only"])


@pytest.fixture(scope="module")
def fresh_clone_repository(released, tmp_path_factory) -> tuple[Path, int, str]:
    """A model repository as a fresh clone has it (the tracked config.pbtxt, no version), after
    `make serve`'s first command (in this process: the CLI's exit codes are tested below): (repository,
    exit code, what it printed)."""
    repository = tmp_path_factory.mktemp("fresh-clone") / "model_repository"
    (repository / MODEL_NAME).mkdir(parents=True)
    shutil.copy(REPO_ROOT / "model_repository" / MODEL_NAME / "config.pbtxt", repository / MODEL_NAME / "config.pbtxt")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = release.main(["--publish-if-empty", "--out", str(released), "--repository", str(repository), "--no-fp16"])
    return repository, code, printed.getvalue()


def test_publish_if_empty_publishes_once_through_the_real_export(released, fresh_clone_repository, capsys):
    from clients.evaluate import faces_from_version

    repository, code, printed = fresh_clone_repository
    assert code == 0
    line = printed.strip()
    assert line.splitlines() == [line] and "had no version: published the released generator" in line and "(2 epochs, " in line
    model_dir = repository / MODEL_NAME
    assert versions(model_dir) == [1]
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert metadata["parity"]["onnx"]["passed"] and metadata["source"]["sha256"] == release.sha256_file(released / WEIGHTS_NAME)

    # ONNX Runtime on the published generator.onnx draws the release's faces (within one uint8 level).
    served, _, _ = faces_from_version(model_dir, 16, 16, progress=False)
    expected = faces(generator_from_checkpoint(load_checkpoint(released / WEIGHTS_NAME)), np.arange(16))
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1

    assert release.main(["--publish-if-empty", "--out", str(released), "--repository", str(repository)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.splitlines() == [line] and "serving version 1" in line and "not published" in line
    assert versions(model_dir) == [1]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_or_missing_release_is_one_line_and_exit_2(released, tmp_path, damage):
    out = tmp_path / "released"
    out.mkdir()
    if damage == "truncated":
        data = (released / WEIGHTS_NAME).read_bytes()
        (out / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    result = cli("--publish-if-empty", "--out", str(out), "--repository", str(tmp_path / "repo"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("release: error: ")
    assert ("truncated or not a PyTorch checkpoint" if damage == "truncated" else "there is no released generator") in result.stderr
    assert versions(tmp_path / "repo" / MODEL_NAME) == []


def test_make_serve_publishes_before_it_serves():
    result = subprocess.run(["make", "-n", "serve", "MODEL_REPOSITORY=some/repo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stdout.splitlines() if "-m export.release" in line or "-m serving" in line]
    assert "-m export.release --publish-if-empty --repository some/repo" in lines[0]
    assert "-m serving --model-repository some/repo" in lines[1]


def test_a_fresh_clone_serves_the_released_generator(fresh_clone_repository, tmp_path):
    """As `make serve` on a fresh clone: published on first use, then Triton answers seeds over gRPC
    with the published generator's faces."""
    from clients.generate import request_faces
    from serving.launcher import TritonServer, free_ports
    from clients.evaluate import faces_from_version

    repository, code, _ = fresh_clone_repository
    assert code == 0
    grpc_port, http_port, metrics_port = free_ports(3)
    with TritonServer(repository, grpc_port, http_port, metrics_port, log_path=tmp_path / "tritonserver.log",
                      cache_mib=0, poll_seconds=0) as server:  # started on entry, stopped on exit
        images = request_faces(server.grpc_url, np.arange(8))
    onnx_faces, _, _ = faces_from_version(repository / MODEL_NAME, 8, 8, progress=False)
    assert np.array_equal(images, onnx_faces)


def test_the_demo_shows_the_released_generator_beside_its_run(run, released, tmp_path, capsys):
    """clients/demo.py's released stage: the release exported as the server would load it, its faces for the
    demo's seeds (ONNX Runtime) beside the demo run's grid."""
    from clients.demo import SEED_COUNT, Stages, released_stage
    from training.data.images import save_png

    out = tmp_path / "demo"
    save_png(out / "faces.png", image_grid(faces(generator_from_checkpoint(load_checkpoint(run / LATEST)), np.arange(SEED_COUNT))))
    path = released_stage(Stages(total=7), sys.executable, run, out, released / WEIGHTS_NAME)
    assert path == out / "side_by_side.png" and Image.open(path).size[0] > 2 * Image.open(out / "faces.png").size[0]
    assert "=== [1/7] released" in capsys.readouterr().out
    assert versions(out / "released_repository" / MODEL_NAME) == [1]
