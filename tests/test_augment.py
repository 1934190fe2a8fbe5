"""DiffAugment (training/augment.py): each transform does what the paper says, gradients pass through,
draws are per global batch, and a run with it resumes exactly."""

import pytest
import torch

from training.augment import CUTOUT_RATIO, TRANSLATION_RATIO, diff_augment, parse_policy
from training.config import TrainConfig, parse_args
from training.train import LATEST, train

from .test_train import assert_same_training_state, tiny_config


def images(count=6, seed=0):
    return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_policies_parse_and_unknown_names_are_refused(capsys):
    assert parse_policy("") == () and parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match=r"augment policy names \['blur'\] unknown"):
        parse_policy("color,blur")
    with pytest.raises(SystemExit):
        parse_args(["--augment", "rotate"])
    assert "augment policy names ['rotate'] unknown" in capsys.readouterr().err


def test_translation_shifts_whole_images_by_at_most_an_eighth_with_zeros_shifted_in():
    x = images()
    out = diff_augment(x, ("translation",), torch.Generator().manual_seed(1))
    limit = int(64 * TRANSLATION_RATIO + 0.5)
    padded = torch.nn.functional.pad(x, [limit] * 4)
    shifts = []
    for row in range(len(x)):
        found = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                 if torch.equal(out[row], padded[row, :, limit - dy : limit - dy + 64, limit - dx : limit - dx + 64])]
        assert len(found) == 1, row
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # each image its own shift


def test_cutout_zeroes_one_square_of_half_the_side_and_keeps_the_rest():
    x = images() + 3  # no pixel is zero before the cutout
    out = diff_augment(x, ("cutout",), torch.Generator().manual_seed(2))
    side = int(64 * CUTOUT_RATIO + 0.5)
    for row in range(len(x)):
        cut = out[row, 0] == 0
        assert torch.equal(cut, (out[row] == 0).all(0))  # every channel alike
        ys, xs = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        assert 0 < len(ys) <= side and 0 < len(xs) <= side and cut.sum() == len(ys) * len(xs)  # one rectangle
        assert (len(ys) == side or ys[0] == 0 or ys[-1] == 63) and (len(xs) == side or xs[0] == 0 or xs[-1] == 63)
        assert torch.equal(out[row][:, ~cut], x[row][:, ~cut])


def test_color_is_a_per_image_brightness_saturation_contrast_change():
    x = images()
    out = diff_augment(x, ("color",), torch.Generator().manual_seed(3))
    assert out.shape == x.shape and not torch.allclose(out, x)
    offsets = (out - x).mean(dim=(1, 2, 3))
    assert offsets.unique().numel() == len(x)  # drawn per image
    assert (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() <= 0.5 + 1e-5  # contrast and saturation keep the mean


def test_gradients_reach_every_input_image_through_the_full_policy():
    x = images().requires_grad_(True)
    diff_augment(x, parse_policy("color,translation,cutout"), torch.Generator().manual_seed(4)).square().sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_draws_are_for_the_global_batch_so_a_process_gets_its_rows_of_the_one_process_result():
    x, policy = images(8), parse_policy("color,translation,cutout")
    whole = diff_augment(x, policy, torch.Generator().manual_seed(5))
    half = diff_augment(x[4:], policy, torch.Generator().manual_seed(5), batch=8, rows=slice(4, 8))
    assert torch.allclose(half, whole[4:], atol=1e-6)


def test_an_empty_policy_draws_nothing_and_changes_nothing():
    generator, x = torch.Generator().manual_seed(6), images()
    before = generator.get_state()
    assert diff_augment(x, (), generator) is x and torch.equal(generator.get_state(), before)


def test_a_run_with_diffaugment_and_stylegan_ema_resumes_exactly(tmp_path):
    candidates = dict(augment="color,translation,cutout", ema_kimg=0.1, ema_rampup=0.05)
    train(tiny_config(tmp_path, epochs=2, **candidates), tmp_path / "straight")
    train(tiny_config(tmp_path, epochs=1, **candidates), tmp_path / "resumed")
    train(tiny_config(tmp_path, **candidates), tmp_path / "resumed", resume=True, resume_epochs=2)
    assert_same_training_state(tmp_path / "straight" / LATEST, tmp_path / "resumed" / LATEST)
    plain = train(tiny_config(tmp_path, epochs=1), tmp_path / "plain")
    assert TrainConfig().augment == "" and plain.augment_policy == ()


def test_every_image_d_sees_is_augmented_in_both_steps(tmp_path):
    """With cutout on, every row of D's input (real, G(z), blurred, memory) and of the G step's has its
    square of exact zeros; without it, none has (no model image is exactly 0 in all channels)."""
    from .test_tuning import tiny_trainer

    for policy, expect_cut in (("cutout", True), ("", False)):
        trainer = tiny_trainer(tmp_path, augment=policy, memory_fill_epoch=0, memory_replay_epoch=0)
        trainer.memory.add(torch.rand(16, 3, 64, 64) * 2 - 1)
        seen = []
        for name in ("D_step", "D_frozen"):
            network = getattr(trainer, name)
            setattr(trainer, name, lambda batch, network=network: seen.append(batch.detach()) or network(batch))
        trainer.step(torch.arange(16))
        d_input, g_input = seen
        assert len(d_input) == 4 * 16 and len(g_input) == 16  # real, fake, blur, memory
        for batch in (d_input, g_input):
            cut = (batch == 0).all(1).flatten(1).sum(1)
            assert ((cut >= 16 * 16) if expect_cut else (cut == 0)).all(), policy
