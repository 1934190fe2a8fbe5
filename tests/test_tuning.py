"""The trainer's tuning options: weight-decay groups, random flips, G-EMA's standing statistics, the
time budget, and the tuning ladder of training.config.

Trainers are built directly on random uint8 faces (tiny model, one thread); the time-budget test
trains a real tiny run."""

import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from training.config import ABLATIONS, BASELINES, CANDIDATES, PAPER_ABLATIONS, TUNING_LADDER, TrainConfig, parse_args
from training.constants import Z_DIM
from training.data.images import from_uint8_nchw
from training.networks.sagan import Generator
from training.train import LATEST, STANDING_BATCH_SIZE, STANDING_BATCHES, Trainer, evaluate_now, standing_statistics, train

from .paths import REPO
from .test_train import tiny_config

SPECTRAL_ORIGINAL = "parametrizations.weight.original"  # torch's name for a spectral-norm layer's unnormalised weight


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_trainer(tmp_path, **overrides) -> Trainer:
    """A Trainer on 64 random faces, 8 of them standing in for the blurred negatives."""
    pixels = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Trainer(tiny_config(tmp_path, **overrides), pixels, pixels[:8].clone(), torch.device("cpu"))


# -- weight decay ----------------------------------------------------------------------------------


def group_names(net: torch.nn.Module, optimiser: torch.optim.Optimizer) -> list[tuple[float, set[str]]]:
    names = {id(parameter): name for name, parameter in net.named_parameters()}
    return [(group["weight_decay"], {names[id(p)] for p in group["params"]}) for group in optimiser.param_groups]


def test_weight_decay_skips_spectrally_normalised_weights(tmp_path):
    trainer = tiny_trainer(tmp_path, decay_normalised=False, weight_decay=0.01)
    for net, optimiser in ((trainer.G, trainer.opt_G), (trainer.D, trainer.opt_D)):
        every = {name for name, _ in net.named_parameters()}
        normalised = {name for name in every if name.endswith(SPECTRAL_ORIGINAL)}
        assert normalised and group_names(net, optimiser) == [(0.01, every - normalised), (0.0, normalised)]
    decayed = group_names(trainer.G, trainer.opt_G)[0][1]
    last = len(trainer.G.net) - 2  # G's output ConvTranspose2d (before tanh) has no spectral norm
    for name in ("net.0.1.weight", "net.0.1.bias", "net.0.0.bias", f"net.{last}.weight", f"net.{last}.bias"):
        assert name in decayed, name  # BatchNorm, biases, the output layer
    assert any(name.endswith("gamma") for name in decayed)  # attention's gamma

    trainer = tiny_trainer(tmp_path, decay_normalised=True, weight_decay=0.01)
    for net, optimiser in ((trainer.G, trainer.opt_G), (trainer.D, trainer.opt_D)):
        # decay everywhere: one group, the layout of runs saved before the split (their optimiser state loads)
        assert group_names(net, optimiser) == [(0.01, {name for name, _ in net.named_parameters()})]


@pytest.mark.parametrize("decay_normalised", [False, True])
def test_a_step_on_zero_gradients_moves_only_the_decayed_weights(tmp_path, decay_normalised):
    """With zero gradients Adam's step is weight decay alone: it moves exactly the decayed parameters."""
    trainer = tiny_trainer(tmp_path, decay_normalised=decay_normalised, weight_decay=0.01)
    for net, optimiser in ((trainer.G, trainer.opt_G), (trainer.D, trainer.opt_D)):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(0.01)  # nothing exactly 0 (gamma, BatchNorm bias): decay of 0 moves nothing
                parameter.grad = torch.zeros_like(parameter)
        before = {name: parameter.detach().clone() for name, parameter in net.named_parameters()}
        optimiser.step()
        for name, parameter in net.named_parameters():
            moved = parameter.detach() != before[name]
            if name.endswith(SPECTRAL_ORIGINAL) and not decay_normalised:
                assert not moved.any(), name
            else:
                assert moved[before[name] != 0].all(), name


# -- random flips ----------------------------------------------------------------------------------


def test_images_mirrors_exactly_the_flagged_rows(tmp_path):
    trainer = tiny_trainer(tmp_path)
    pixels = trainer.pixels[:6]
    flips = torch.tensor([True, False, True, False, False, True])
    images, plain = trainer._images(pixels, flips), from_uint8_nchw(pixels)
    for row in range(6):
        assert torch.equal(images[row], plain[row].flip(2) if flips[row] else plain[row]), row
    assert not torch.equal(plain[0], plain[0].flip(2))  # random faces are not symmetric: the check can fail
    assert torch.equal(trainer._images(pixels), plain)


def d_step_inputs(trainer: Trainer, batch_index: torch.Tensor) -> torch.Tensor:
    """The images D's step sees in one training step ([real | fake | blur | ...]), caught by a forward hook."""
    seen = []
    hook = trainer.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        trainer.step(batch_index)
    finally:
        hook.remove()
    return seen[0]  # the D step's call; the G step's call (fakes only) comes second


def mirrored_rows(images: torch.Tensor, candidates: torch.Tensor) -> list[bool]:
    """For each image, whether it is a mirrored candidate (True) or an unmirrored one (False); an image
    that is neither fails."""
    mirrored = []
    for image in images:
        plain = any(torch.equal(image, candidate) for candidate in candidates)
        flipped = any(torch.equal(image, candidate.flip(2)) for candidate in candidates)
        assert plain != flipped, "an input is neither a face nor its mirror image"
        mirrored.append(flipped)
    return mirrored


@pytest.mark.parametrize("flip", [True, False])
def test_a_step_mirrors_some_real_and_blurred_faces_when_flip_is_on(tmp_path, flip):
    trainer = tiny_trainer(tmp_path, flip=flip)
    batch_index = torch.arange(16)
    seen = d_step_inputs(trainer, batch_index)
    real, blur = seen[:16], seen[32:48]
    plain_real = from_uint8_nchw(trainer.pixels[batch_index])
    real_mirrored = [torch.equal(real[row], plain_real[row].flip(2)) for row in range(16)]
    assert all(real_mirrored[row] or torch.equal(real[row], plain_real[row]) for row in range(16))
    blur_mirrored = mirrored_rows(blur, from_uint8_nchw(trainer.blurred))
    if flip:  # 16 fair coins each: all-heads or all-tails has odds 2^-15
        assert 0 < sum(real_mirrored) < 16 and 0 < sum(blur_mirrored) < 16
    else:
        assert not any(real_mirrored) and not any(blur_mirrored)


# -- G-EMA's statistics ----------------------------------------------------------------------------


def spectral_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if hasattr(m, "parametrizations") and hasattr(m.parametrizations, "weight")]


def sigma_errors(net: torch.nn.Module) -> list[float]:
    """Per spectral-norm layer: |u^T W v / ||W||_2 - 1|, the relative error of the layer's sigma estimate
    (from its power-iteration vectors) against W's largest singular value."""
    errors = []
    for layer in spectral_layers(net):
        norm = layer.parametrizations.weight[0]
        matrix = layer.parametrizations.weight.original.movedim(norm.dim, 0).flatten(1)  # as torch's spectral norm
        estimate = torch.dot(norm._u, matrix @ norm._v)
        errors.append(abs(estimate / torch.linalg.matrix_norm(matrix, ord=2) - 1).item())
    return errors


@pytest.fixture
def g_and_ema():
    """G after a few train-mode passes, and a G-EMA copy whose spectrally-normalised weights differ from
    G's by 30% of their spread (an EMA lagging G), still holding G's vectors and BatchNorm statistics."""
    torch.manual_seed(0)
    generator = Generator(Z_DIM, channels=4).train()
    with torch.no_grad():
        for _ in range(3):
            generator(torch.randn(16, Z_DIM))
        ema = copy.deepcopy(generator)
        noise = torch.Generator().manual_seed(0)
        for name, parameter in ema.named_parameters():
            if name.endswith(SPECTRAL_ORIGINAL):
                parameter.add_(0.3 * parameter.std() * torch.randn(parameter.shape, generator=noise))
            if name.endswith("gamma"):
                parameter.fill_(0.5)  # the attention path contributes to the activations
    return generator, ema.eval()


def test_standing_statistics_average_g_emas_own_batch_statistics(g_and_ema):
    generator, ema = g_and_ema
    norm = next(m for m in ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    hook = norm.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach().clone()))
    standing_statistics(ema, seed=3)
    hook.remove()

    assert [len(batch) for batch in inputs] == [STANDING_BATCH_SIZE] * STANDING_BATCHES
    means = torch.stack([batch.mean((0, 2, 3)) for batch in inputs])
    variances = torch.stack([batch.var((0, 2, 3), unbiased=True) for batch in inputs])  # BatchNorm's running var is unbiased
    torch.testing.assert_close(norm.running_mean, means.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.running_var, variances.mean(0), rtol=1e-4, atol=1e-6)
    g_norm = next(m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(norm.running_mean, g_norm.running_mean, rtol=0.05)  # no longer G's


def test_standing_statistics_give_g_ema_its_own_singular_vectors(g_and_ema):
    generator, ema = g_and_ema
    with_g_vectors = sigma_errors(ema)
    standing_statistics(ema, seed=3)
    own = sigma_errors(ema)
    assert len(own) == len(spectral_layers(generator)) > 0
    assert all(error < 0.02 for error in own), own
    assert all(before > after for before, after in zip(with_g_vectors, own)), (with_g_vectors, own)
    assert max(with_g_vectors) > 0.02  # G's vectors were measurably wrong for G-EMA's weights
    assert all(error < 0.02 for error in sigma_errors(generator))  # and right for G's own


def test_standing_statistics_are_a_function_of_weights_and_seed(g_and_ema):
    _, ema = g_and_ema
    ema.net[0][1].momentum = 0.3  # a non-default momentum, to see it restored
    momenta = [m.momentum for m in ema.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = {name: parameter.detach().clone() for name, parameter in ema.named_parameters()}
    first, second, other_seed = copy.deepcopy(ema), copy.deepcopy(ema), copy.deepcopy(ema)
    for net, seed in ((first, 3), (second, 3), (other_seed, 4)):
        standing_statistics(net, seed=seed)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.net[0][1].running_mean, other_seed.net[0][1].running_mean)
    assert not any(module.training for module in first.modules())
    assert [m.momentum for m in first.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta
    for name, parameter in first.named_parameters():
        assert torch.equal(parameter, weights[name]), name  # statistics only: the weights are untouched


def buffers_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers()))


def test_without_standing_statistics_g_ema_copies_gs_buffers(tmp_path):
    trainer = tiny_trainer(tmp_path, ema_standing_stats=False)
    trainer.step(torch.arange(16))
    assert buffers_equal(trainer.G_ema, trainer.G)
    trainer.finish_epoch(1.5)
    assert buffers_equal(trainer.G_ema, trainer.G) and (trainer.epoch, trainer.train_seconds) == (1, 1.5)


def test_with_standing_statistics_g_ema_keeps_its_own_buffers(tmp_path):
    trainer = tiny_trainer(tmp_path, ema_standing_stats=True)
    initial = [buffer.clone() for buffer in trainer.G_ema.buffers()]
    trainer.step(torch.arange(16))
    assert not buffers_equal(trainer.G_ema, trainer.G)
    assert all(torch.equal(a, b) for a, b in zip(trainer.G_ema.buffers(), initial))  # steps leave them alone
    trainer.finish_epoch(1.5)
    trainer.finish_epoch(2.0)
    assert not any(torch.equal(a, b) for a, b in zip(trainer.G_ema.buffers(), initial) if a.is_floating_point())
    assert (trainer.epoch, trainer.train_seconds) == (2, 3.5) and not trainer.G_ema.training


# -- the EMA half-life ------------------------------------------------------------------------------


def test_the_default_ema_ramps_to_a_fixed_decay_per_step(tmp_path):
    trainer = tiny_trainer(tmp_path)
    for step, decay in ((0, 0.1), (90, 0.91), (100_000, 0.999)):
        trainer.step_count = step
        assert trainer.ema_decay() == pytest.approx(decay)


def test_stylegan_ema_halves_every_ema_kimg_images_after_a_rampup(tmp_path):
    trainer = tiny_trainer(tmp_path, ema_kimg=10.0, ema_rampup=0.05, batch_size=32)
    trainer.step_count = 0
    assert trainer.ema_decay() == 0.0  # nothing seen yet: G-EMA starts as G
    trainer.step_count = 1000  # 32,000 images seen: the ramp caps the half-life at 0.05 x 32,000 = 1,600 images
    assert trainer.ema_decay() ** (1600 / 32) == pytest.approx(0.5)
    trainer.step_count = 100_000  # past the ramp: 10 kimg
    assert trainer.ema_decay() ** (10_000 / 32) == pytest.approx(0.5)
    no_ramp = tiny_trainer(tmp_path, ema_kimg=10.0, batch_size=64)
    no_ramp.step_count = 0
    assert no_ramp.ema_decay() ** (10_000 / 64) == pytest.approx(0.5)  # the same half-life in images at another batch


def test_a_step_moves_g_ema_by_the_decay(tmp_path):
    trainer = tiny_trainer(tmp_path, ema_kimg=0.05, ema_rampup=None)
    trainer.step_count = 5
    before = [p.clone() for p in trainer.G_ema.parameters()]
    trainer.step(torch.arange(16))
    decay = 0.5 ** (16 / 50)
    for ema, old, live in zip(trainer.G_ema.parameters(), before, trainer.G.parameters()):
        assert torch.allclose(ema, decay * old + (1 - decay) * live, atol=1e-6)


@pytest.mark.parametrize("flags, words", [(["--ema-kimg", "0"], "ema_kimg and ema_rampup must be positive"),
                                          (["--ema-rampup", "-1"], "ema_kimg and ema_rampup must be positive"),
                                          (["--ema-decay", "1"], "ema_decay must be in [0, 1)")])
def test_bad_ema_options_are_refused_in_one_line(flags, words, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert words in capsys.readouterr().err


# -- the time budget -------------------------------------------------------------------------------


def test_time_budget_stops_after_the_epoch_that_spends_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "cache"))  # the metrics' real-set statistics cache
    run = tmp_path / "run"
    config = tiny_config(tmp_path, epochs=5, minutes=1e-6, metrics_every=3, metrics_count=16, checkpoint_every=5)
    trainer = train(config, run)
    assert trainer.epoch == 1 and trainer.finished()
    state = torch.load(run / LATEST, weights_only=True)  # written though checkpoint_every would skip epoch 1
    assert state["epoch"] == 1 and state["train_seconds"] > 60 * config.minutes
    assert [json.loads(line)["epoch"] for line in (run / "stats.jsonl").read_text().splitlines()] == [1]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]  # scored: the last


def test_the_last_epoch_is_scored_however_it_is_reached():
    config = TrainConfig(epochs=5, metrics_every=3)
    assert [epoch for epoch in range(1, 6) if evaluate_now(config, epoch)] == [3, 5]
    assert evaluate_now(config, 1, last=True) and not evaluate_now(dataclasses.replace(config, metrics_every=0), 1, last=True)


def test_minutes_parse_and_bad_budgets_are_refused(capsys):
    assert parse_args(["--minutes", "2.5"])[0].minutes == 2.5 and TrainConfig().minutes is None
    with pytest.raises(ValueError, match="minutes must be positive, got 0"):
        TrainConfig(minutes=0)
    with pytest.raises(SystemExit):
        parse_args(["--minutes", "-1"])
    assert "minutes must be positive, got -1" in capsys.readouterr().err


# -- ablations and the tuning ladder ---------------------------------------------------------------


def test_the_study_trains_the_papers_ablations_by_default():
    from training.studies.ablation import parse_args as study_args
    from training.studies.ablation import study_options

    args, train_args = study_args([])
    assert study_options(args, train_args, None)["variants"] == list(PAPER_ABLATIONS)
    assert ABLATIONS == {**PAPER_ABLATIONS, **TUNING_LADDER, **CANDIDATES, **BASELINES}
    assert len(ABLATIONS) == len(PAPER_ABLATIONS) + len(TUNING_LADDER) + len(CANDIDATES) + len(BASELINES)


def test_each_baseline_changes_only_the_loss_from_sagan_but_dcgan_tricks():
    defaults = dataclasses.asdict(TrainConfig())
    for name, change in BASELINES.items():
        config = dataclasses.asdict(parse_args(["--ablation", name])[0])
        differs = {key for key in config if config[key] != {**defaults, **PAPER_ABLATIONS["sagan"]}[key]}
        assert "loss" in differs or name == "dcgan-tricks", name
        assert differs <= {"loss", "gp_weight", "d_steps", "lr_g", "lr_d", "beta1", "beta2", "attention", "label_smoothing"}, name


def test_each_candidate_is_one_change_to_bamsgan_or_sagan():
    defaults = dataclasses.asdict(TrainConfig())
    for name, change in CANDIDATES.items():
        base = next((base for base in ("sagan", "memory-only") if name.startswith(base + "-")), "bamsgan")
        expected = {**defaults, **PAPER_ABLATIONS[base], **change}
        assert dataclasses.asdict(parse_args(["--ablation", name])[0]) == expected, name
        changed = {field for field in change if PAPER_ABLATIONS[base].get(field, defaults[field]) != change[field]}
        assert changed and (len(changed) == 1 or changed == {"ema_kimg", "ema_rampup"}), name  # StyleGAN's EMA: one change of two fields


def test_every_ladder_step_is_a_trainer_ablation():
    defaults = dataclasses.asdict(TrainConfig())
    for name, step in TUNING_LADDER.items():
        assert dataclasses.asdict(parse_args(["--ablation", name])[0]) == {**defaults, **step}, name


def test_each_ladder_step_changes_one_thing():
    defaults, steps = TrainConfig(), list(TUNING_LADDER.items())
    for (before_name, before), (name, after) in zip(steps, steps[1:]):
        fields = set(before) | set(after)
        changed = {f for f in fields if before.get(f, getattr(defaults, f)) != after.get(f, getattr(defaults, f))}
        assert len(changed) == 1, f"{before_name} -> {name} changes {sorted(changed)}"


def test_the_ladder_ends_at_todays_defaults():
    name, last = list(TUNING_LADDER.items())[-1]
    defaults = TrainConfig()
    differ = {field: (value, getattr(defaults, field)) for field, value in last.items() if getattr(defaults, field) != value}
    assert not differ, f"{name} sets (its value, the default): {differ}"


# -- the runtime-variant benchmark -----------------------------------------------------------------


def test_bench_training_refuses_an_unknown_variant_in_one_line():
    # The measuring run itself (`--variants eager,channels-last --steps 1`) takes minutes on 2 busy cores:
    # not run here.
    command = [sys.executable, "-m", "training.studies.bench_training", "--variants", "eager+bogus",
               "--threads", "1", "--steps", "1", "--batch-size", "8"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == ("error: unknown variant part 'bogus'; choose from eager, channels-last, compile, bf16 "
                                   "or FIELD=VALUE with a training config field (python -m training.train --help)")


def test_a_run_saved_before_the_tuning_resumes_with_its_own_recipe():
    from training.config import BEFORE_TUNING, config_from_dict

    saved = dataclasses.asdict(TrainConfig())
    for field in ("fake_terms", "decay_normalised", "ema_standing_stats", "flip", "minutes"):  # fields it did not have
        del saved[field]
    saved["blur_fraction"] = 0.1  # it had this one
    config = config_from_dict(saved)
    assert {field: getattr(config, field) for field in BEFORE_TUNING} == BEFORE_TUNING
    assert config.minutes is None
