"""The training loop: run directory, checkpoints, exact resume, metrics, clear errors.

On the shared real faces (../shared/data) when present, else on synthetic faces: a fresh clone
without the data still tests the whole loop."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.checkpoint import generator_from_checkpoint, load_checkpoint
from training.config import PAPER_ABLATIONS, PRESETS, TrainConfig, fork_config, parse_args
from training.constants import Z_DIM
from training.data.images import image_grid, to_uint8_nhwc
from training.latents import seeds_to_latents
from training.train import LATEST, main, train

from .paths import MINI_TAR

DATA = str(MINI_TAR) if MINI_TAR.exists() else "synthetic"  # 64 images either way (max_images / synthetic_size)


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(data=DATA, max_images=64, synthetic_size=64, cache_dir=str(tmp_path / "cache"), channels=4, batch_size=16,
                  epochs=3, memory_capacity=24, memory_fill_epoch=0, memory_replay_epoch=1, memory_store_per_step=4,
                  sample_seeds=9, threads=1)
    return TrainConfig(**{**values, **overrides})


def flat_state(state):
    """Every tensor in a checkpoint, keyed by its path, for exact comparison."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}/{index}", item)
        else:
            out[prefix] = value

    walk("", state)
    return out


# Checkpoint entries that may differ between a straight and a resumed run: the config (epochs differs)
# and train_seconds (wall-clock time, never reproducible).
NOT_REPRODUCED = ("/config", "/train_seconds")


def assert_same_training_state(path_a, path_b) -> None:
    """Two checkpoints hold bit-identical training state (weights, optimisers, memory, RNG, position)."""
    a, b = flat_state(load_checkpoint(path_a)), flat_state(load_checkpoint(path_b))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif not key.startswith(NOT_REPRODUCED):
            assert a[key] == b[key], key


def test_run_describes_itself_and_resume_is_exact(tmp_path):
    # Random flips and G-EMA's standing statistics draw random numbers too: resume must repeat them.
    drawing = dict(flip=True, ema_standing_stats=True)
    config = tiny_config(tmp_path, **drawing)
    straight = train(config, tmp_path / "straight")

    interrupted_dir = tmp_path / "interrupted"
    train(tiny_config(tmp_path, epochs=2, **drawing), interrupted_dir)
    resumed = train(tiny_config(tmp_path, **drawing), interrupted_dir, resume=True, resume_epochs=3)
    assert resumed.epoch == 3 and resumed.step_count == straight.step_count == 12

    assert_same_training_state(tmp_path / "straight" / LATEST, interrupted_dir / LATEST)
    assert len(resumed.memory) == 24  # the memory bank filled and was carried across the resume

    run = tmp_path / "straight"
    options = json.loads((run / "options.json").read_text())
    assert options["channels"] == 4 and options["data"] == DATA and "run" in options
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2, 3]
    assert all(np.isfinite(s["loss_D"]) and s["images_per_s"] > 0 for s in stats)
    assert "loss_D_memory" not in stats[0] and "loss_D_memory" in stats[1] and "loss_D_blur" in stats[0]
    assert len(list((interrupted_dir / "stats.jsonl").read_text().splitlines())) == 3
    assert "resumes" not in options["run"]  # the straight run had one sitting
    sittings = json.loads((interrupted_dir / "options.json").read_text())["run"]["resumes"]
    assert [(s["from_epoch"], s["epochs"]) for s in sittings] == [(2, 3)] and sittings[0]["command"] and sittings[0]["started"]

    # The sample grid is G-EMA at the fixed seeds, drawn with the one latent mapping and image conversion.
    G = generator_from_checkpoint(load_checkpoint(run / LATEST))
    if config.channels_last:  # the run's memory format: NHWC sums round differently, ~1e-6, enough to move a uint8 level
        G = G.to(memory_format=torch.channels_last)
    with torch.no_grad():
        images = to_uint8_nhwc(G(torch.from_numpy(seeds_to_latents(np.arange(9), Z_DIM)))).numpy()
    assert np.array_equal(np.asarray(Image.open(run / "samples" / "epoch-0003.png")), image_grid(images))
    assert (run / "samples" / "reals.png").exists()


def test_checkpoint_is_plain_and_complete(tmp_path):
    train(tiny_config(tmp_path, epochs=1, keep_checkpoints=1), tmp_path / "run")
    state = torch.load(tmp_path / "run" / LATEST, weights_only=True)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "memory", "epoch", "step", "train_seconds", "rng", "config", "model"):
        assert key in state
    assert state["memory"]["images"].abs().max() <= 1 and state["memory"]["images"].dtype == torch.float32
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-0001.pt"]


def test_nothing_is_overwritten_and_bad_checkpoints_are_named(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, epochs=1), run)
    before = (run / LATEST).read_bytes()
    with pytest.raises(SystemExit, match="already holds a run"):
        train(tiny_config(tmp_path, epochs=1), run)
    assert (run / LATEST).read_bytes() == before

    with pytest.raises(SystemExit, match="does not exist"):
        train(tiny_config(tmp_path), tmp_path / "nothing-here", resume=True)

    (run / LATEST).write_bytes(before[: len(before) // 3])  # a checkpoint cut short
    with pytest.raises(SystemExit, match="truncated"):
        main(["--out", str(run), "--resume", "--epochs", "2"])


def test_ablation_flags_reach_the_networks(tmp_path):
    trainer = train(tiny_config(tmp_path, epochs=1, blur=False, memory=False, attention=False), tmp_path / "dcgan")
    assert trainer.blurred is None and trainer.memory is None
    assert not any("qkv" in name for name, _ in trainer.G.named_parameters())


def test_resume_continues_to_the_runs_own_epoch_count(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, epochs=2, checkpoint_every=1), run)
    state = load_checkpoint(run / LATEST)
    state["epoch"] = 1  # as if interrupted after epoch 1 of 2
    from training.checkpoint import save_checkpoint

    save_checkpoint(run / LATEST, state)
    main(["--out", str(run), "--resume"])  # no --epochs: the run's own 2, not the preset's default
    assert load_checkpoint(run / LATEST)["epoch"] == 2
    # Epoch 2 was logged, "lost" and redone: stats.jsonl holds it once.
    assert [json.loads(line)["epoch"] for line in (run / "stats.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize(
    "flags, words",
    [(["--data", "/no/such/images"], "error:"), (["--max-images", "0"], "max_images"), (["--memory-capacity", "0"], "capacity")],
)
def test_bad_data_or_options_are_one_line_errors(tmp_path, flags, words):
    args = ["--data", DATA, "--synthetic-size", "64", "--channels", "4", "--batch-size", "16", "--max-images", "64",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--epochs", "1"]
    with pytest.raises(SystemExit, match=words):
        main(args + flags)


def test_default_run_dir_has_no_glob_characters():
    from training.train import default_run_dir

    name = default_run_dir(TrainConfig(data="../shared/data/anime-faces-64/shard-*.tar")).name
    assert name.endswith("-anime-faces-64-cpu") and "*" not in name
    assert default_run_dir(TrainConfig(data="../shared/data/anime-faces-mini-512.tar")).name.endswith("-anime-faces-mini-512-cpu")


def test_metrics_every_epoch_and_d_logits_per_part(tmp_path, monkeypatch):
    """--metrics-every 1 on synthetic data: one metrics.jsonl record per epoch in the contract's format
    (the resumed run appends), and D's mean logit per input part in stats.jsonl."""
    from training.metrics.face_quality import HEADLINE_METRIC, METRIC_NAMES

    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "cache"))  # the metrics' real-set statistics cache
    run = tmp_path / "run"
    args = ["--data", "synthetic", "--synthetic-size", "64", "--cache-dir", str(tmp_path / "cache"), "--channels", "4",
            "--batch-size", "16", "--memory-capacity", "24", "--memory-fill-epoch", "0", "--memory-replay-epoch", "1",
            "--sample-seeds", "4", "--threads", "1", "--metrics-every", "1", "--metrics-count", "32", "--out", str(run)]
    main(args + ["--epochs", "1"])
    main(["--out", str(run), "--resume", "--epochs", "2"])

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [4, 8]
    for record in records:
        assert set(record) == {"epoch", "step", "kimg", "n", "seconds", "metrics"} and record["seconds"] > 0
        assert record["n"] == 32 and record["kimg"] == record["step"] * 16 / 1000
        assert set(record["metrics"]) <= set(METRIC_NAMES) and HEADLINE_METRIC in record["metrics"]
        for entry in record["metrics"].values():
            assert {"value", "uncertainty", "n_fake", "n_real", "unavailable"} <= set(entry)
            assert (entry["value"] is None) == (entry["unavailable"] is not None)
        headline = record["metrics"][HEADLINE_METRIC]
        assert np.isfinite(headline["value"]) and headline["n_fake"] == 32 and headline["n_real"] == 32
    assert records[0]["metrics"][HEADLINE_METRIC]["value"] != records[1]["metrics"][HEADLINE_METRIC]["value"]

    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2]
    for s in stats:
        assert all(np.isfinite(s[f"D_{part}"]) for part in ("real", "fake", "blur"))
    assert "D_memory" not in stats[0] and np.isfinite(stats[1]["D_memory"])  # memory is replayed from epoch 2
    assert not list(run.glob(".*.partial"))

    # TensorBoard shows the same metrics (those with a value) at the same steps, each once after the resume.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run), size_guidance={"scalars": 0})
    board.Reload()
    for name, entry in records[0]["metrics"].items():
        if entry["value"] is not None:
            logged = board.Scalars(f"Metrics/{name}")
            assert [e.step for e in logged] == [r["step"] for r in records], name
            assert [e.value for e in logged] == pytest.approx([r["metrics"][name]["value"] for r in records]), name

    with pytest.raises(SystemExit, match="error: no face detector file at"):
        main(args[:-1] + [str(tmp_path / "other"), "--detector", str(tmp_path / "no-such.xml")])
    assert not (tmp_path / "other" / "options.json").exists()


def test_one_source_of_defaults(capsys):
    """The dataclass defaults are the cpu preset (the CLI's default); the paper preset is the paper's."""
    assert PRESETS["cpu"] == {} and parse_args([])[0] == TrainConfig() == parse_args(["--preset", "cpu"])[0]
    paper = parse_args(["--preset", "paper"])[0]
    assert (paper.channels, paper.batch_size, paper.epochs, paper.lr_g, paper.lr_d, paper.beta1, paper.beta2) == \
        (64, 64, 300, 1e-4, 4e-4, 0.0, 0.9)  # SAGAN's model and TTUR Adam; the paper's 300 epochs
    assert (paper.memory_fill_epoch, paper.memory_replay_epoch, paper.weight_decay) == (20, 25, 1e-4)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("epochs", TrainConfig.epochs), ("batch-size", TrainConfig.batch_size), ("beta1", TrainConfig.beta1)):
        assert f"--{flag} {flag.upper().replace('-', '_')} default {default!r} (paper: {getattr(paper, flag.replace('-', '_'))!r})" in help_text


def test_generator_attention_resolutions_reach_the_checkpoint_and_back(tmp_path):
    """--g-attention 16 drops G's 32x32 attention; the checkpoint's model says so and rebuilds it."""
    from training.networks.attention import SelfAttention2d

    run = tmp_path / "run"
    trainer = train(tiny_config(tmp_path, epochs=1, g_attention="16"), run)
    assert [m.channels for m in trainer.G.modules() if isinstance(m, SelfAttention2d)] == [8]  # 16x16 only (2c = 8)
    state = load_checkpoint(run / LATEST)
    assert state["model"]["g_attention"] == [16]
    rebuilt = generator_from_checkpoint(state)
    assert [m.channels for m in rebuilt.modules() if isinstance(m, SelfAttention2d)] == [8]
    older = {**state, "model": {key: value for key, value in state["model"].items() if key != "g_attention"}}
    with pytest.raises(Exception, match="do not fit its architecture"):  # a checkpoint without the field: the paper's layers
        generator_from_checkpoint(older)


@pytest.mark.parametrize("text", ["8", "16,64", "x", ""])
def test_bad_generator_attention_is_one_line(text, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--g-attention", text])
    assert "g_attention" in capsys.readouterr().err


def test_bf16_autocast_on_cpu_only_where_native(tmp_path, monkeypatch):
    """--cpu-amp: bf16 layers on a CPU with native bf16, fp32 elsewhere (and said so); weights stay fp32."""
    from training import train as train_module

    for native in (False, True):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
        config = tiny_config(tmp_path, epochs=1, cpu_amp=True)
        assert train_module.use_bf16(config, torch.device("cpu")) is native
        assert train_module.use_bf16(dataclasses.replace(config, amp=False), torch.device("cpu")) is False
    run = tmp_path / "bf16"
    trainer = train(tiny_config(tmp_path, epochs=1, cpu_amp=True), run)  # native bf16 pretended: emulated where absent, still right
    assert trainer.bf16 and all(p.dtype == torch.float32 for p in trainer.G.parameters())
    with trainer.autocast():
        assert trainer.G(torch.randn(2, Z_DIM)).dtype == torch.bfloat16
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert np.isfinite(stats[-1]["loss_D"]) and json.loads((run / "options.json").read_text())["run"]["bf16"] is True


def test_bench_variants_take_named_parts_and_config_fields():
    from training.studies.bench_training import variant_flags

    assert variant_flags("channels-last+bf16+batch_size=64+g_attention=16") == {
        "channels_last": True, "compile": False, "amp": True, "cpu_amp": True, "batch_size": 64, "g_attention": "16"}
    assert variant_flags("eager") == {"channels_last": False, "compile": False, "amp": False}
    with pytest.raises(SystemExit, match="unknown variant part 'turbo'"):
        variant_flags("eager+turbo")


SAGAN_TINY = ["--data", DATA, "--synthetic-size", "64", "--max-images", "64", "--channels", "4", "--batch-size", "16",
              "--threads", "1", "--sample-seeds", "9", "--memory-capacity", "24", "--memory-store-per-step", "4"]


def test_a_fork_without_changes_is_the_exact_continuation(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    main([*SAGAN_TINY, *cache, "--ablation", "sagan", "--epochs", "3", "--out", str(tmp_path / "straight")])
    main([*SAGAN_TINY, *cache, "--ablation", "sagan", "--epochs", "2", "--out", str(tmp_path / "first")])
    main(["--fork", str(tmp_path / "first" / LATEST), "--epochs", "3", "--out", str(tmp_path / "fork")])
    assert_same_training_state(tmp_path / "straight" / LATEST, tmp_path / "fork" / LATEST)
    forked = json.loads((tmp_path / "fork" / "options.json").read_text())["run"]["forked_from"]
    assert forked["epoch"] == 2 and forked["checkpoint"].endswith(LATEST)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "fork" / "stats.jsonl").read_text().splitlines()] == [3]


def test_a_fork_switches_blur_and_memory_on_and_fills_the_memory_before_replaying(tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    main([*SAGAN_TINY, *cache, "--ablation", "sagan", "--epochs", "2", "--out", str(tmp_path / "sagan")])
    for seed in (0, 1):
        main(["--fork", str(tmp_path / "sagan" / LATEST), "--blur", "--memory", "--epochs", "4", "--seed", str(seed),
              "--out", str(tmp_path / f"bamsgan-{seed}")])
    printed = capsys.readouterr().out
    assert "has no memory repository (its run had none); the memory starts empty" in printed
    assert "fills from epoch 3 and replays from epoch 4" in printed and "blur False -> True" in printed
    stats = [json.loads(line) for line in (tmp_path / "bamsgan-0" / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [3, 4]
    assert "loss_D_blur" in stats[0] and "loss_D_memory" not in stats[0] and "loss_D_memory" in stats[1]
    assert stats[0]["memory_images"] > 0
    seeds = [flat(load_checkpoint(tmp_path / f"bamsgan-{seed}" / LATEST)["G"]) for seed in (0, 1)]
    assert not torch.equal(seeds[0], seeds[1])  # --seed reseeds what follows the fork


@pytest.mark.parametrize("variant", ["bamsgan", "sagan", "blur-only", "memory-only"])
def test_a_fork_switches_to_what_the_variant_names_and_keeps_its_own_clock(variant):
    # The late-training study forks one SAGAN checkpoint into each paper variant: "bamsgan" must switch
    # blur and memory on, not keep the parent's; the parent's time budget is not the fork's.
    parent = TrainConfig(blur=False, memory=False, minutes=200.0)
    _, args = parse_args(["--fork", "parent.pt", "--ablation", variant, "--epochs", "45"])
    config, notes = fork_config(parent, args, fork_epoch=40)
    assert (config.blur, config.memory) == ("blur" in variant or variant == "bamsgan", "memory" in variant or variant == "bamsgan")
    assert config.minutes is None and config.epochs == 45
    _, args = parse_args(["--fork", "parent.pt", "--ablation", variant, "--minutes", "30"])
    assert fork_config(parent, args, fork_epoch=40)[0].minutes == 30.0
    assert set(PAPER_ABLATIONS[variant]) == {"blur", "memory"}


def test_a_fork_cannot_become_a_dcgan():
    _, args = parse_args(["--fork", "parent.pt", "--ablation", "dcgan"])
    with pytest.raises(ValueError, match="cannot change attention"):
        fork_config(TrainConfig(), args, fork_epoch=40)


def flat(state_dict) -> torch.Tensor:
    return torch.cat([value.flatten().float() for value in state_dict.values()])


def test_a_fork_keeps_the_networks_and_needs_a_training_checkpoint(tmp_path, capsys):
    main([*SAGAN_TINY, "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="cannot change channels"):
        main(["--fork", str(tmp_path / "run" / LATEST), "--channels", "8", "--out", str(tmp_path / "wider")])
    with pytest.raises(SystemExit, match="no checkpoint|not a BaMSGAN|does not exist|No such file"):
        main(["--fork", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "nothing")])
    assert not (tmp_path / "wider").exists() or not (tmp_path / "wider" / "options.json").exists()


def test_wgan_gp_takes_several_critic_steps_per_generator_step(tmp_path):
    trainer = train(tiny_config(tmp_path, epochs=1, blur=False, memory=False, loss="wgan-gp", d_steps=2, lr_g=1e-4, lr_d=1e-4,
                                beta1=0.0), tmp_path / "wgan")
    g_steps = {int(state["step"]) for state in trainer.opt_G.state.values()}
    d_steps = {int(state["step"]) for state in trainer.opt_D.state.values()}
    assert trainer.step_count == 4 and d_steps == {4} and g_steps == {2}
    stats = json.loads((tmp_path / "wgan" / "stats.jsonl").read_text().splitlines()[0])
    assert stats["loss_D_gp"] >= 0 and np.isfinite(stats["loss_G"]) and np.isfinite(stats["loss_D"])
