import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig, parse_args
from training.loss import FAKE_TERMS, discriminator_loss, generator_loss

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
