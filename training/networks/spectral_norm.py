"""Spectral normalisation whose power iteration stays in fp32 under autocast.

torch's parametrization computes sigma with torch.mv, which CUDA autocast runs in bf16/fp16;
sigma then carries bf16 rounding into every weight. This subclass runs the parametrization
with autocast off. State-dict keys are torch's own (`parametrizations.weight.original`,
`parametrizations.weight.0._u` / `_v`), so export and checkpoints see the usual layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class _FP32SpectralNorm(_SpectralNorm):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return super().forward(weight)


def spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise `module.weight` (dim 1 for transposed convolutions, as torch does)."""
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    parametrize.register_parametrization(module, "weight", _FP32SpectralNorm(module.weight, dim=1 if transposed else 0))
    return module


def spectral_norm_original_weights(module: nn.Module) -> list[torch.Tensor]:
    """The unnormalised weights of every spectrally-normalised layer in `module` (their scale does
    not change what the layer computes: the layer uses W / sigma(W))."""
    return [sub.parametrizations.weight.original for sub in module.modules()
            if parametrize.is_parametrized(sub, "weight") and isinstance(sub.parametrizations.weight[0], _SpectralNorm)]
