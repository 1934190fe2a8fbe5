"""Data-parallel training under real torchrun: 2 gloo processes on CPU, a tiny model, synthetic faces.

Two processes with per-rank batch 8 against one process with batch 16 (the same global batch):
the random draws are made for the global batch and sliced (training/distributed.py), so the runs
differ only by the order of float sums (gradient all-reduce, global BatchNorm statistics). After 8
steps the largest weight difference measured 2.3e-5 (G), 7.7e-7 (D); the tolerance is 1e-4, below
what one Adam step can move a weight (lr 2e-4), so a step computed differently (per-rank BatchNorm,
duplicated latents, a rank's rows missing) fails it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving.launcher import free_ports
from training.checkpoint import LATEST, load_checkpoint
from training.config import TrainConfig
from training.distributed import digest
from training.train import train

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
# The paper's summed loss and decay on every weight: parameters with an exactly zero gradient get
# their Adam steps from rounding noise alone (the averaged negatives cancel D's output-bias gradient;
# spectral-norm weights without decay have near-zero components), and noise cannot be compared at
# 1e-4. The distributed mechanics under test are the same for every recipe.
# fp32 (cpu_amp off): the comparison below bounds the float-sum order at 1e-4; bf16 rounds each split batch's
# activations differently, by more than one Adam step, so it would hide a wrongly computed step.
TINY = dict(data="synthetic", synthetic_size=64, channels=4, batch_size=16, epochs=2, memory_capacity=24,
            memory_fill_epoch=0, memory_replay_epoch=1, sample_seeds=4, threads=1, fake_terms="sum", decay_normalised=True,
            cpu_amp=False)


def flags(values: dict) -> list[str]:
    """The trainer's command line for these config values (booleans as --name / --no-name)."""
    words = []
    for name, value in values.items():
        flag = name.replace("_", "-")
        words += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return words


def launch(args: list[str], *torchrun_args: str, launcher: str = "training.distributed") -> subprocess.CompletedProcess:
    """2 local training processes under torchrun: plain (launcher="torch.distributed.run") or through
    `python -m training.distributed` (torchrun with one-line failures)."""
    torchrun_args = torchrun_args or ("--standalone", "--nproc-per-node", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", launcher, *torchrun_args, "-m", "training.train", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def zero_gradient_keys(state: dict) -> set[str]:
    """G's convolution biases that feed a BatchNorm (it subtracts them again): their exact gradient is
    zero, so Adam (dividing by the gradient's size) moves them by rounding noise, and two process
    counts need not agree on them."""
    return {f"{name}.{key}" for name in ("G", "G_ema") for key in state[name] if key.endswith(".0.bias")}


def assert_close(a: dict, b: dict, what: str) -> None:
    skipped = zero_gradient_keys(a)
    for name in ("G", "D", "G_ema"):
        for key, value in a[name].items():
            if value.is_floating_point() and f"{name}.{key}" not in skipped:
                difference = (value - b[name][key]).abs().max().item()
                assert difference < TOLERANCE, f"{what}: {name}.{key} differs by {difference:.2e}"
    assert (a["memory"]["images"] - b["memory"]["images"]).abs().max().item() < TOLERANCE
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])


def resume_copy(checkpoint: Path, run_dir: Path) -> Path:
    """A run directory whose latest checkpoint is `checkpoint` (as if the run had stopped there)."""
    run_dir.mkdir(parents=True)
    shutil.copy(checkpoint, run_dir / LATEST)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-epoch run in 2 processes (torchrun) and in 1 (in this process)."""
    root = tmp_path_factory.mktemp("ddp")
    config = {**TINY, "cache_dir": str(root / "cache")}
    ddp = launch(flags(config) + ["--out", str(root / "ddp")], launcher="torch.distributed.run")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    train(TrainConfig(**config), root / "single", world=None)
    return root, ddp


def test_two_ranks_train_bit_identical_g_ema(runs):
    root, ddp = runs
    ranks = dict(re.findall(r"rank (\d) of 2: G-EMA sha256 ([0-9a-f]{64})", ddp.stdout))
    assert sorted(ranks) == ["0", "1"] and ranks["0"] == ranks["1"]
    assert ranks["0"] == digest(load_checkpoint(root / "ddp" / LATEST)["G_ema"])  # rank 0 wrote what every rank holds
    stats = [json.loads(line) for line in (root / "ddp" / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2] and all(s["processes"] == 2 for s in stats)  # rank 0 alone logs
    assert json.loads((root / "ddp" / "options.json").read_text())["run"]["processes"] == 2
    assert ddp.stdout.count("epoch 2:") == 1 and "2 processes x 8 images" in ddp.stdout


def test_two_ranks_of_b_match_one_process_of_2b(runs):
    root, _ = runs
    assert_close(load_checkpoint(root / "ddp" / LATEST), load_checkpoint(root / "single" / LATEST), "2 ranks vs 1")


def test_checkpoints_resume_across_world_sizes(runs):
    root, _ = runs
    single = load_checkpoint(root / "single" / LATEST)
    cache = ["--cache-dir", str(root / "cache")]

    # Written by 2 processes, continued by 1.
    one = resume_copy(root / "ddp" / "checkpoints" / "epoch-0001.pt", root / "ddp-then-1")
    train(TrainConfig(), one, resume=True)
    assert_close(load_checkpoint(one / LATEST), single, "2 processes then 1")

    # Written by 1 process, continued by 2.
    two = resume_copy(root / "single" / "checkpoints" / "epoch-0001.pt", root / "1-then-ddp")
    resumed = launch(["--out", str(two), "--resume"] + cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 process(es) wrote the checkpoint, 2 continue it" in resumed.stdout
    assert_close(load_checkpoint(two / LATEST), single, "1 process then 2")


def test_unsplittable_resume_and_unreachable_rendezvous_are_one_line(tmp_path):
    run = tmp_path / "odd"
    train(TrainConfig(**{**TINY, "batch_size": 15, "epochs": 1, "cache_dir": str(tmp_path / "cache")}), run)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = launch(["--out", str(run), "--resume", "--epochs", "2"])
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: the run's global batch 15 (saved in its checkpoint) does not split over 2 processes; "
        "use a process count that divides it (1, 3, 5, 15)"]
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before  # nothing lost

    # Node 1 of 2, pointed at a port where no node 0 listens: torchrun's rendezvous times out after 2 s.
    (port,) = free_ports(1)
    result = launch(["--data", "synthetic", "--out", str(tmp_path / "never")], "--nnodes", "2", "--node-rank", "1",
                    "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-conf", "timeout=2")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no rendezvous with the other nodes at 127.0.0.1:{port}")
    assert not (tmp_path / "never").exists()


def test_global_batchnorm_in_one_process_is_batchnorm():
    from training.distributed import GlobalBatchNorm2d, use_global_batchnorm
    from training.networks.sagan import Generator

    torch.manual_seed(0)
    plain = Generator(channels=4).train()
    converted = use_global_batchnorm(Generator(channels=4).train())
    converted.load_state_dict(plain.state_dict())
    assert any(isinstance(m, GlobalBatchNorm2d) for m in converted.modules())
    assert plain.state_dict().keys() == converted.state_dict().keys()
    z = torch.randn(8, 128)
    assert torch.equal(plain(z), converted(z))
