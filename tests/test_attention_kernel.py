"""The Triton SAGAN attention kernel against the fp32 reference.

Without CUDA the kernel runs on CPU tensors through the Triton interpreter; with CUDA these tests
check the compiled kernel on the GPU instead.

TRITON_INTERPRET: Triton reads it whenever @triton.jit decorates a function, and its own standard
library (tl.zeros, tl.sum, ...) is decorated when `triton` is first imported. So the variable must
be set before anything in this pytest process imports triton: this module sets it at the top,
before its own imports. If another test module imported triton earlier without it, the
interpreter cannot be switched on in this process any more: then every test here is skipped and
test_in_subprocess runs this file in a fresh `python -m pytest` with TRITON_INTERPRET=1. Once set,
the variable stays set: every Triton kernel in this process is interpreted anyway.

Small shapes: the interpreter runs every program instance in Python.
"""

import os

import torch

if not torch.cuda.is_available():  # torch does not import triton
    os.environ["TRITON_INTERPRET"] = "1"

import copy  # noqa: E402
import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from training.networks import attention_kernel  # noqa: E402
from training.networks.attention import SelfAttention2d, attention_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Interpreted standard library <=> triton was first imported with TRITON_INTERPRET=1.
IN_PROCESS = DEVICE == "cuda" or isinstance(triton.language.zeros, InterpretedFunction)
if IN_PROCESS and DEVICE == "cpu" and not attention_kernel.INTERPRET:
    importlib.reload(attention_kernel)  # imported earlier without the variable: decorate again


@pytest.fixture(autouse=True)
def _in_process_only(request):
    if not IN_PROCESS and request.node.name != "test_in_subprocess":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; test_in_subprocess runs these checks")


def test_in_subprocess():
    if IN_PROCESS:
        pytest.skip("the checks run in this process")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                            cwd=repo, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def sagan_attention(q, k, v):
    return attention_kernel.sagan_attention(q, k, v)  # looked up at call time: after any reload


def _inputs(batch, n, qk_channels, channels, dtype, logit_scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, qk_channels, generator=generator) * logit_scale
    k = torch.randn(batch, n, qk_channels, generator=generator)
    v = torch.randn(batch, n, channels, generator=generator)
    grad = torch.randn(batch, n, channels, generator=generator)
    return [x.to(DEVICE, dtype) for x in (q, k, v, grad)]


def _kernel_and_reference(q, k, v, grad):
    """Output and (dq, dk, dv) of the kernel, and of the fp32 reference on the same rounded inputs."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = sagan_attention(*leaves)
    out.backward(grad)
    ref_leaves = [x.float().requires_grad_() for x in (q, k, v)]
    ref = attention_reference(*ref_leaves)
    ref.backward(grad.float())
    return [out] + [x.grad for x in leaves], [ref] + [x.grad for x in ref_leaves]


# (batch, N, Cqk, C, logit scale). The interpreter's tiles are BLOCK_M=32, BLOCK_N=16 and value
# column tiles of 32, so these cover: one partial tile (7), exact tiles (64), masked edge tiles
# (49, 100), several column tiles (64, 128, 512) including a partial one (40), q/k widths padded to
# 16 (2..8), exact (16) and wide (64), large unscaled logits, and the discriminator's 4x4 shape.
FP32_SHAPES = [
    (2, 7, 2, 16, 1.0),
    (1, 64, 8, 64, 1.0),
    (1, 100, 4, 32, 1.0),
    (1, 100, 8, 16, 6.0),
    (2, 49, 5, 40, 1.0),
    (1, 256, 8, 16, 1.0),
    (1, 20, 16, 128, 1.0),
    (1, 16, 64, 512, 1.0),
]


@pytest.mark.parametrize("batch, n, qk_channels, channels, logit_scale", FP32_SHAPES)
def test_fp32_matches_reference(batch, n, qk_channels, channels, logit_scale):
    q, k, v, grad = _inputs(batch, n, qk_channels, channels, torch.float32, logit_scale)
    got, expected = _kernel_and_reference(q, k, v, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


# Error relative to the largest reference value. The kernel rounds P and dS to the input dtype
# before the tensor-core products (as FlashAttention does), so the bound follows the dtype's epsilon.
LOW_PRECISION_TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch, n, qk_channels, channels", [(2, 49, 4, 32), (1, 100, 8, 64)])
def test_low_precision_matches_fp32_reference(dtype, batch, n, qk_channels, channels):
    q, k, v, grad = _inputs(batch, n, qk_channels, channels, dtype)
    got, expected = _kernel_and_reference(q, k, v, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == dtype, name
        error = (a.float() - b).abs().max() / b.abs().max()
        assert error < LOW_PRECISION_TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


# Every attention shape of the paper's model (c = 64): G at 16x16 (C 128) and 32x32 (C 64), D at 8x8
# (C 256) and 4x4 (C 512), as (N, Cqk, C). CUDA only: the interpreter would take minutes per shape.
# `make gpu-check` runs this file on the GPU.
PAPER_SHAPES = [(256, 16, 128), (1024, 8, 64), (64, 32, 256), (16, 64, 512)]
RELATIVE_TOLERANCE = {torch.float32: 1e-4, **LOW_PRECISION_TOLERANCE}


@pytest.mark.skipif(DEVICE != "cuda", reason="the models' full shapes take minutes in the Triton interpreter: CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n, qk_channels, channels", PAPER_SHAPES, ids=["G16", "G32", "D8", "D4"])
def test_paper_model_shapes_on_cuda(dtype, n, qk_channels, channels):
    q, k, v, grad = _inputs(4, n, qk_channels, channels, dtype)
    got, expected = _kernel_and_reference(q, k, v, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == dtype and a.shape == b.shape, name
        error = (a.float() - b).abs().max() / b.abs().max()
        assert error < RELATIVE_TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


def test_self_attention_module_kernel_matches_reference():
    """impl="kernel" inside SelfAttention2d: q, k, v are strided views of the fused projection."""
    torch.manual_seed(0)
    module = SelfAttention2d(32, impl="reference").to(DEVICE)  # Cqk = 4, N = 7 * 7 = 49
    with torch.no_grad():
        module.gamma.fill_(0.8)  # gamma starts at 0, which would hide the attention path
    kernel_module = copy.deepcopy(module)  # same spectral-norm state: one forward each
    kernel_module.impl = "kernel"
    x = torch.randn(2, 32, 7, 7, device=DEVICE)
    grad = torch.randn(2, 32, 7, 7, device=DEVICE)
    results = []
    for block in (kernel_module, module):
        inputs = x.clone().requires_grad_()
        out = block(inputs)
        out.backward(grad)
        results.append((out.detach(), inputs.grad, {name: p.grad for name, p in block.named_parameters()}))
    (out, dx, params), (ref_out, ref_dx, ref_params) = results
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx, ref_dx, atol=1e-4, rtol=1e-4)
    assert params.keys() == ref_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], ref_params[name], atol=1e-4, rtol=1e-4, msg=name)


def test_bad_inputs_raise_clear_errors():
    q, k, v = (torch.randn(1, 8, n, device=DEVICE) for n in (2, 2, 16))
    with pytest.raises(ValueError, match="expected q, k"):
        sagan_attention(q, k[:, :4], v)
    with pytest.raises(ValueError, match="one dtype"):
        sagan_attention(q.half(), k, v)
    with pytest.raises(ValueError, match="one dtype"):
        sagan_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="at most"):
        sagan_attention(torch.randn(1, 8, 256, device=DEVICE), torch.randn(1, 8, 256, device=DEVICE), v)
    with pytest.raises(ValueError, match="non-empty"):
        sagan_attention(q[:, :0], k[:, :0], v[:, :0])


def test_double_backward_raises():
    q, k, v = (torch.randn(1, 7, n, device=DEVICE, requires_grad=True) for n in (2, 2, 16))
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(sagan_attention(q, k, v).sum(), q, create_graph=True)


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setattr(attention_kernel, "INTERPRET", False)  # as if imported without TRITON_INTERPRET
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        sagan_attention(torch.randn(1, 8, 2), torch.randn(1, 8, 2), torch.randn(1, 8, 16))
