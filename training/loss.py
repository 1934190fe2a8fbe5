"""The paper's four-term discriminator loss and the generator loss.

    L_D = E_x[l_real(D(x))] + E_z[l_fake(D(G(z)))] + w_b E_b[l_fake(D(b))] + w_m E_m[l_fake(D(m))]

over real images x, generated images G(z), edge-blurred real images b and memory images m.
With fake_terms="average" the negatives' terms are averaged (their weights normalised to sum to 1)
instead of summed (the paper's form, fake_terms="sum"): summed, three negative terms against one
positive push D to score everything low — measured on the CPU preset, D's mean logit on reals sat
below zero for the whole run — and D then barely tells a sharp face from a blurred one.
"hinge" (SAGAN's loss, the default): l_real(d) = relu(1 - d), l_fake(d) = relu(1 + d).
"bce" (the paper's log form): l_real(d) = -log sigmoid(d), l_fake(d) = -log(1 - sigmoid(d)).
Terms whose inputs are absent (blur off, memory not yet replayed) are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _real_term(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return F.relu(1.0 - logits).mean() if kind == "hinge" else F.softplus(-logits).mean()


def _fake_term(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return F.relu(1.0 + logits).mean() if kind == "hinge" else F.softplus(logits).mean()


FAKE_TERMS = ("sum", "average")


def discriminator_loss(
    logits: dict[str, torch.Tensor], kind: str = "hinge", blur_weight: float = 1.0, memory_weight: float = 1.0,
    fake_terms: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logits: {"real", "fake", optionally "blur", "memory"} -> (total, per-term losses)."""
    if fake_terms not in FAKE_TERMS:
        raise ValueError(f"fake_terms must be one of {FAKE_TERMS}, got {fake_terms!r}")
    terms = {"real": _real_term(logits["real"], kind), "fake": _fake_term(logits["fake"], kind)}
    weights = {"fake": 1.0, "blur": blur_weight, "memory": memory_weight}
    for name in ("blur", "memory"):
        if name in logits:
            terms[name] = _fake_term(logits[name], kind)
    negatives = [name for name in terms if name != "real"]
    scale = 1.0 / sum(weights[name] for name in negatives) if fake_terms == "average" else 1.0
    total = terms["real"] + scale * sum(weights[name] * terms[name] for name in negatives)
    return total, terms


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge: -E[D(G(z))]; BCE: the non-saturating -log sigmoid(D(G(z)))."""
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()
