import torch
import torch.nn.functional as F

from training.loss import discriminator_loss, generator_loss


def test_four_term_hinge_loss():
    logits = {"real": torch.tensor([2.0, 0.5]), "fake": torch.tensor([-2.0, 0.0]),
              "blur": torch.tensor([0.5]), "memory": torch.tensor([-0.5])}
    total, terms = discriminator_loss(logits, "hinge", blur_weight=1.0, memory_weight=2.0)
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
