"""The fused attention paths equal the plain bmm + softmax reference, forward and backward."""

import pytest
import torch

from training.networks.attention import SelfAttention2d, attention, attention_reference, set_attention_impl

SHAPES = [(2, 16, 2, 16), (3, 64, 4, 32), (2, 256, 8, 64), (1, 1024, 2, 16), (2, 49, 16, 128)]


@pytest.mark.parametrize("batch, positions, qk_width, v_width", SHAPES)
def test_sdpa_matches_reference(batch, positions, qk_width, v_width):
    generator = torch.Generator().manual_seed(positions)
    q, k = (torch.randn(batch, positions, qk_width, generator=generator) * 2 for _ in range(2))
    v = torch.randn(batch, positions, v_width, generator=generator)
    grad_out = torch.randn(batch, positions, v_width, generator=generator)
    results = {}
    for impl in ("reference", "sdpa"):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = attention(*inputs, impl=impl)
        out.backward(grad_out)
        results[impl] = (out, *(t.grad for t in inputs))
    out, *grads = results["sdpa"]
    want_out, *want_grads = results["reference"]
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, want_grads):  # fp32 sums over up to 1024 positions
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_reference_is_unscaled_softmax():
    q, k, v = torch.randn(1, 5, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 3)
    expected = torch.softmax(q[0] @ k[0].T, dim=-1) @ v[0]  # SAGAN: no 1/sqrt(d)
    torch.testing.assert_close(attention_reference(q, k, v)[0], expected)


@pytest.mark.parametrize("channels, size", [(16, 8), (64, 4), (32, 16)])
def test_module_impls_agree_forward_and_backward(channels, size):
    torch.manual_seed(0)
    block = SelfAttention2d(channels)
    block.gamma.data.fill_(0.7)
    x = torch.randn(2, channels, size, size)
    outputs, grads = {}, {}
    for impl in ("reference", "sdpa"):
        set_attention_impl(block, impl)
        block.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = block.eval()(xi)  # eval: spectral norm does no power iteration, so both calls see equal weights
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outputs[impl] = out
        grads[impl] = [xi.grad, block.gamma.grad, block.qkv.parametrizations.weight.original.grad]
    torch.testing.assert_close(outputs["sdpa"], outputs["reference"], rtol=1e-4, atol=1e-5)
    for got, want in zip(grads["sdpa"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_single_fused_projection_and_zero_gamma():
    block = SelfAttention2d(64)
    assert block.qkv.out_channels == 8 + 8 + 64  # q, k (C/8 each) and v (C) in one 1x1 conv
    assert block.gamma.item() == 0.0
    x = torch.randn(1, 64, 4, 4)
    assert torch.equal(block(x), x)  # gamma = 0: starts as the identity


def test_attention_under_autocast_keeps_fp32_softmax():
    q, k, v = torch.randn(1, 16, 2), torch.randn(1, 16, 2), torch.randn(1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), impl="sdpa")
    assert out.dtype == torch.bfloat16
    expected = attention_reference(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="unknown attention impl"):
        SelfAttention2d(16, impl="flash")
