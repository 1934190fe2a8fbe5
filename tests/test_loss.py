import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig, parse_args
from training.loss import FAKE_TERMS, LOSSES, check_loss, discriminator_loss, generator_loss, gradient_penalty

# Hinge terms by hand: real relu(1 - [2, 0.5]) -> 0.25, fake relu(1 + [-2, 0]) -> 0.5,
# blur relu(1 + 0.5) -> 1.5, memory relu(1 - 0.5) -> 0.5.
FOUR_PARTS = {"real": torch.tensor([2.0, 0.5]), "fake": torch.tensor([-2.0, 0.0]),
              "blur": torch.tensor([0.5]), "memory": torch.tensor([-0.5])}


def test_four_term_hinge_loss():
    total, terms = discriminator_loss(FOUR_PARTS, "hinge", blur_weight=1.0, memory_weight=2.0)
    assert terms["real"].item() == 0.25 and terms["fake"].item() == 0.5
    assert terms["blur"].item() == 1.5 and terms["memory"].item() == 0.5
    assert total.item() == 0.25 + 0.5 + 1.5 + 2 * 0.5


def test_bce_form_is_the_papers_log_loss():
    logits = {"real": torch.tensor([1.0]), "fake": torch.tensor([-1.0]), "blur": torch.tensor([0.3])}
    total, terms = discriminator_loss(logits, "bce")
    expected = -torch.log(torch.sigmoid(torch.tensor(1.0))) - 2 * 0 - torch.log(1 - torch.sigmoid(torch.tensor(-1.0))) \
        - torch.log(1 - torch.sigmoid(torch.tensor(0.3)))
    torch.testing.assert_close(total, expected)
    assert "memory" not in terms


def test_generator_losses():
    logits = torch.tensor([1.0, -3.0])
    assert generator_loss(logits, "hinge").item() == 1.0
    torch.testing.assert_close(generator_loss(logits, "bce"), F.softplus(-logits).mean())


def test_average_is_real_plus_the_weighted_mean_of_the_negatives():
    # blur_weight 2, memory_weight 0.5: the negatives' weights 1, 2, 0.5 are normalised to sum to 1.
    total, terms = discriminator_loss(FOUR_PARTS, "hinge", blur_weight=2.0, memory_weight=0.5, fake_terms="average")
    torch.testing.assert_close(total, torch.tensor(0.25 + (1 * 0.5 + 2 * 1.5 + 0.5 * 0.5) / (1 + 2 + 0.5)))
    assert {name: term.item() for name, term in terms.items()} == {"real": 0.25, "fake": 0.5, "blur": 1.5, "memory": 0.5}

    without_memory = {name: FOUR_PARTS[name] for name in ("real", "fake", "blur")}  # memory not yet replayed
    total, terms = discriminator_loss(without_memory, "hinge", blur_weight=2.0, memory_weight=0.5, fake_terms="average")
    torch.testing.assert_close(total, torch.tensor(0.25 + (1 * 0.5 + 2 * 1.5) / (1 + 2)))  # memory's weight left out too
    assert "memory" not in terms

    real_and_fake = {name: FOUR_PARTS[name] for name in ("real", "fake")}  # one negative: average == sum
    for fake_terms in FAKE_TERMS:
        assert discriminator_loss(real_and_fake, "hinge", 2.0, 0.5, fake_terms)[0].item() == 0.25 + 0.5


def test_average_applies_to_the_bce_form_too():
    logits = {"real": torch.tensor([1.0]), "fake": torch.tensor([-1.0]), "blur": torch.tensor([0.3])}
    total, _ = discriminator_loss(logits, "bce", blur_weight=3.0, fake_terms="average")
    expected = F.softplus(torch.tensor(-1.0)) + (F.softplus(torch.tensor(-1.0)) + 3.0 * F.softplus(torch.tensor(0.3))) / 4.0
    torch.testing.assert_close(total, expected)


def test_sum_is_the_papers_form_and_the_functions_default():
    total, _ = discriminator_loss(FOUR_PARTS, "hinge", blur_weight=2.0, memory_weight=0.5, fake_terms="sum")
    assert total.item() == 0.25 + 0.5 + 2 * 1.5 + 0.5 * 0.5
    assert discriminator_loss(FOUR_PARTS, "hinge", 2.0, 0.5)[0].item() == total.item()


def test_bad_fake_terms_are_refused_with_the_choices(capsys):
    with pytest.raises(ValueError, match=r"fake_terms must be one of \('sum', 'average'\), got 'mean'"):
        TrainConfig(fake_terms="mean")
    with pytest.raises(SystemExit):
        parse_args(["--fake-terms", "mean"])
    assert "fake_terms must be one of ('sum', 'average'), got 'mean'" in capsys.readouterr().err
    assert parse_args(["--fake-terms", "sum"])[0].fake_terms == "sum"


def test_lsgan_and_wgan_terms_by_hand():
    logits = {"real": torch.tensor([2.0, 0.0]), "fake": torch.tensor([-1.0, 1.0])}
    total, terms = discriminator_loss(logits, "lsgan")
    assert terms["real"].item() == 0.5 * (1 + 1) / 2 and terms["fake"].item() == 0.5 * (1 + 1) / 2  # (d-1)^2/2, d^2/2
    assert generator_loss(torch.tensor([1.0, -1.0]), "lsgan").item() == 0.5 * (0 + 4) / 2
    total, terms = discriminator_loss(logits, "wgan-gp")
    assert terms["real"].item() == -1.0 and terms["fake"].item() == 0.0 and total.item() == -1.0
    assert generator_loss(torch.tensor([1.0, 3.0]), "wgan-gp").item() == -2.0


def test_label_smoothing_aims_bce_at_point_nine_and_point_one():
    logits = {"real": torch.tensor([0.3]), "fake": torch.tensor([-0.2])}
    _, terms = discriminator_loss(logits, "bce", label_smoothing=0.1)
    bce = lambda d, y: -(y * torch.log(torch.sigmoid(d)) + (1 - y) * torch.log(1 - torch.sigmoid(d)))
    torch.testing.assert_close(terms["real"], bce(torch.tensor(0.3), 0.9))
    torch.testing.assert_close(terms["fake"], bce(torch.tensor(-0.2), 0.1))
    with pytest.raises(ValueError, match="label_smoothing needs --loss bce"):
        check_loss("hinge", 0.1)


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = <w, x> has gradient w everywhere: the penalty is (|w| - 1)^2 whatever the points."""
    weight = torch.full((1, 3, 4, 4), 0.5)  # |w| = 0.5 * sqrt(48)
    critic = lambda images: (images * weight).flatten(1).sum(1)
    penalty = gradient_penalty(critic, torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), torch.rand(5))
    torch.testing.assert_close(penalty, torch.tensor((0.5 * 48**0.5 - 1) ** 2))


def test_unknown_loss_is_one_line_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--loss", "wasserstein"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1
    assert err[0].endswith("loss must be one of hinge, bce, lsgan, wgan-gp; got 'wasserstein'")
    for name in LOSSES:
        assert parse_args(["--loss", name])[0].loss == name
