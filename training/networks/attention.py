"""SAGAN self-attention with a fused QKV projection.

SAGAN attention: one head, queries and keys of C/8 channels, values of C channels, logits
q.k without the 1/sqrt(d) scale, and the output added back through a learnable gamma that
starts at 0 (so a fresh network behaves like its convolutional part alone).

Implementations of the attention core (all take q, k [B, N, Cqk] and v [B, N, C]):
- "reference": bmm + softmax in fp32; materialises the [N, N] matrix. The tests compare every
  other path with it, and export uses it (plain MatMul/Softmax ONNX ops every runtime has).
- "sdpa": torch.nn.functional.scaled_dot_product_attention with scale=1 (fused; no [N, N]
  matrix on CUDA's memory-efficient kernel). q/k are zero-padded to v's width on CPU: zero
  channels add nothing to q.k, and CPU's fused kernel only serves equal widths (measured 3x).
- "kernel": the custom OpenAI Triton kernel (training/networks/attention_kernel.py) for CUDA tensors.
- "auto": the kernel on CUDA when Triton is available, SDPA otherwise.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.spectral_norm import spectral_norm

ATTENTION_IMPLS = ("auto", "reference", "sdpa", "kernel")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v with logits and softmax in fp32; returns v's dtype."""
    logits = torch.bmm(q.float(), k.float().transpose(1, 2))
    weights = torch.softmax(logits, dim=-1)
    return torch.bmm(weights, v.float()).to(v.dtype)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Fused softmax(q k^T) v through PyTorch SDPA, unscaled, one head."""
    # Contiguous operands: views split out of the fused projection send SDPA to its slow path
    # (measured on CPU: 6-7x slower).
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    pad = v.shape[-1] - q.shape[-1]
    if pad > 0 and q.device.type == "cpu":
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0)
    return out.squeeze(1)


@functools.cache  # a failed import is not cached by Python: don't retry it on every forward
def _kernel_available() -> bool:
    try:
        from training.networks import attention_kernel  # noqa: F401  (needs OpenAI Triton)
    except ImportError:
        return False
    return True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Dispatch the attention core; logits and softmax run in fp32 whatever the autocast state."""
    if impl == "auto":
        impl = "kernel" if q.is_cuda and _kernel_available() else "sdpa"
    if impl == "reference":
        return attention_reference(q, k, v)
    if impl == "kernel":
        from training.networks.attention_kernel import sagan_attention

        return sagan_attention(q, k, v)
    if impl == "sdpa":
        # SDPA runs in its inputs' dtype: fp32 keeps the logits and softmax in fp32 under autocast.
        with torch.autocast(device_type=q.device.type, enabled=False):
            return attention_sdpa(q.float(), k.float(), v.float()).to(v.dtype)
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")


class SelfAttention2d(nn.Module):
    """SAGAN self-attention block over a [B, C, H, W] feature map.

    One 1x1 convolution produces q, k (C/8 channels each) and v (C channels) in a single GEMM.
    """

    def __init__(self, channels: int, use_spectral_norm: bool = True, impl: str = "auto"):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
        self.channels = channels
        self.qk_channels = max(1, channels // 8)
        qkv = nn.Conv2d(channels, 2 * self.qk_channels + channels, kernel_size=1)
        self.qkv = spectral_norm(qkv) if use_spectral_norm else qkv
        self.gamma = nn.Parameter(torch.zeros(1))
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(x).flatten(2).transpose(1, 2)  # [B, N, 2*Cqk + C]
        q, k, v = qkv.split([self.qk_channels, self.qk_channels, channels], dim=2)
        out = attention(q, k, v, self.impl)  # [B, N, C]
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.gamma.to(out.dtype) * out


def set_attention_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every SelfAttention2d inside `module` to `impl` (e.g. "reference" for export)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
    for block in module.modules():
        if isinstance(block, SelfAttention2d):
            block.impl = impl
    return module
