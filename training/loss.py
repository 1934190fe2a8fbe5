"""The paper's four-term discriminator loss, the generator loss, and the baselines' loss functions.

    L_D = E_x[l_real(D(x))] + E_z[l_fake(D(G(z)))] + w_b E_b[l_fake(D(b))] + w_m E_m[l_fake(D(m))]

over real images x, generated images G(z), edge-blurred real images b and memory images m.
With fake_terms="average" the negatives' terms are averaged (their weights normalised to sum to 1)
instead of summed (the paper's form, fake_terms="sum"): summed, three negative terms against one
positive push D to score everything low — measured on the CPU preset, D's mean logit on reals sat
below zero for the whole run — and D then barely tells a sharp face from a blurred one.
Terms whose inputs are absent (blur off, memory not yet replayed) are left out.

The per-input losses l_real, l_fake and the generator's, by `kind` (LOSSES):
- "hinge" (SAGAN's, the default): relu(1 - d), relu(1 + d); G: -d.
- "bce" (the paper's log form, DCGAN's): -log sigmoid(d), -log(1 - sigmoid(d)); G the non-saturating
  -log sigmoid(d). `label_smoothing` s aims D at 1 - s for reals and s for fakes (the student
  reports' DCGAN trick: 0.1 gives targets 0.9 / 0.1); G keeps the target 1.
- "lsgan" (Mao et al. 2017, a = 0, b = c = 1): (d - 1)^2 / 2, d^2 / 2; G: (d - 1)^2 / 2.
- "wgan-gp" (Gulrajani et al. 2017): -d, d; G: -d; plus `gradient_penalty` on D, weighted by
  lambda (10 in the paper), with several critic steps per G step (the trainer's d_steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("hinge", "bce", "lsgan", "wgan-gp")
FAKE_TERMS = ("sum", "average")


def check_loss(kind: str, label_smoothing: float = 0.0) -> None:
    """ValueError naming the choices for an unknown loss or a smoothing the loss has no targets for."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {kind!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and kind != "bce":
        raise ValueError(f"label_smoothing needs --loss bce (targets 1 - s and s); {kind} has no probability targets")


def _real_term(logits: torch.Tensor, kind: str, smoothing: float = 0.0) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1.0 - logits).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 - smoothing))
    if kind == "lsgan":
        return 0.5 * (logits - 1.0).square().mean()
    return -logits.mean()  # wgan-gp


def _fake_term(logits: torch.Tensor, kind: str, smoothing: float = 0.0) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1.0 + logits).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, smoothing))
    if kind == "lsgan":
        return 0.5 * logits.square().mean()
    return logits.mean()  # wgan-gp


def discriminator_loss(
    logits: dict[str, torch.Tensor], kind: str = "hinge", blur_weight: float = 1.0, memory_weight: float = 1.0,
    fake_terms: str = "sum", label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logits: {"real", "fake", optionally "blur", "memory"} -> (total, per-term losses)."""
    if fake_terms not in FAKE_TERMS:
        raise ValueError(f"fake_terms must be one of {FAKE_TERMS}, got {fake_terms!r}")
    check_loss(kind, label_smoothing)
    terms = {"real": _real_term(logits["real"], kind, label_smoothing), "fake": _fake_term(logits["fake"], kind, label_smoothing)}
    weights = {"fake": 1.0, "blur": blur_weight, "memory": memory_weight}
    for name in ("blur", "memory"):
        if name in logits:
            terms[name] = _fake_term(logits[name], kind, label_smoothing)
    negatives = [name for name in terms if name != "real"]
    scale = 1.0 / sum(weights[name] for name in negatives) if fake_terms == "average" else 1.0
    total = terms["real"] + scale * sum(weights[name] * terms[name] for name in negatives)
    return total, terms


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge and WGAN: -E[D(G(z))]; BCE: the non-saturating -log sigmoid(D(G(z))); LSGAN: E[(D(G(z)) - 1)^2] / 2."""
    if kind == "bce":
        return F.softplus(-fake_logits).mean()
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1.0).square().mean()
    return -fake_logits.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's E[(|grad_x D(x)| - 1)^2] at x = mix * real + (1 - mix) * fake, mix [B] in [0, 1].

    The penalty's own gradient reaches D's weights (create_graph): call it in fp32, outside
    autocast, on a D whose attention has a double backward (the reference bmm + softmax)."""
    mix = mix.view(-1, 1, 1, 1).to(real.dtype)
    points = (mix * real.detach() + (1.0 - mix) * fake.detach()).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(points).sum(), points, create_graph=True)
    return (grads.flatten(1).norm(dim=1) - 1.0).square().mean()
