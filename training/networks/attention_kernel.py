"""Fused SAGAN attention in OpenAI Triton: softmax(q k^T) v, forward and backward.

SAGAN's attention is one head with narrow queries/keys (Cqk = C/8: 2..64 channels) and wide values
(C: 16..512), unscaled logits, up to 1,024 positions. FlashAttention wants equal widths, so this
kernel is written for the shape (FlashAttention-2 structure):

- Forward: one program per (query block, value-column tile, batch). It streams key/value blocks
  with an online softmax in fp32 (no [N, N] matrix in memory) and saves the per-row logsumexp.
  q/k are read with masked loads into a width padded to what tl.dot needs (>= 16, power of 2):
  zero channels add nothing to q.k, and nothing is padded in memory.
- Value columns are tiled (BLOCK_C), so any C works with a bounded accumulator. Each column tile
  recomputes q k^T, which is cheap: q/k are C/8 wide.
- Backward: a preprocess computes delta = rowsum(dO * O); one kernel per key block computes dK and
  dV, one per query block computes dQ, both recomputing P from q, k and the logsumexp. dS = P *
  (dP - delta) is linear in dP = dO V^T, so each value-column tile contributes its own share of dQ
  and dK (fp32 partials, summed afterwards when there is more than one tile).

Logits live in the log2 domain (exp2 is the fast instruction); the saved logsumexp is base 2.

CPU: TRITON_INTERPRET=1 runs the kernels on CPU tensors through Triton's interpreter. Triton reads
the variable whenever @triton.jit decorates a function: its own standard library when `triton` is
first imported, these kernels when this module is. So set it before anything imports triton.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Same truthy spellings as Triton's knob; fixed at import, like the decorated kernels below.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")
LOG2E = tl.constexpr(1.4426950408889634)  # logits are scaled into the log2 domain for exp2
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
MAX_QK_CHANNELS = 128  # q/k tiles are held whole in registers; SAGAN uses at most 64


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vc,
    stride_ob, stride_on, stride_oc,
    N_CTX, QK_DIM, V_DIM,
    QK_PAD: tl.constexpr, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    DTYPE = V.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, QK_PAD)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask, d_mask, c_mask = offs_m < N_CTX, offs_d < QK_DIM, offs_c < V_DIM

    q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (log2 domain)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for start_n in range(0, N_CTX, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N_CTX
        kT = tl.load(K + b * stride_kb + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        s = tl.dot(q, kT.to(DOT_DTYPE), input_precision=PRECISION) * LOG2E  # logits, log2 domain
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * stride_vb + offs_n[:, None] * stride_vn + offs_c[None, :] * stride_vc,
                    mask=n_mask[:, None] & c_mask[None, :], other=0.0)
        # P is rounded to the input dtype for the tensor-core dot (DOT_DTYPE: see _meta).
        acc = tl.dot(p.to(DTYPE).to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None],
                     input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(Out + b * stride_ob + offs_m[:, None] * stride_on + offs_c[None, :] * stride_oc, acc.to(DTYPE),
             mask=m_mask[:, None] & c_mask[None, :])
    # Every column tile computes the same logsumexp; the first one writes it.
    if pid_c == 0:
        tl.store(LSE + b * N_CTX + offs_m, m_i + tl.log2(l_i), mask=m_mask)


@triton.jit
def _bwd_preprocess_kernel(
    Out, dO, Delta,
    stride_ob, stride_on, stride_oc,
    stride_dob, stride_don, stride_doc,
    N_CTX, V_DIM,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """delta[b, i] = sum_c dO[b, i, c] * O[b, i, c] (the row term of the softmax gradient)."""
    pid_m, b = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < N_CTX
    delta = tl.zeros([BLOCK_M], tl.float32)
    for start_c in range(0, V_DIM, BLOCK_C):
        offs_c = start_c + tl.arange(0, BLOCK_C)
        mask = m_mask[:, None] & (offs_c < V_DIM)[None, :]
        o = tl.load(Out + b * stride_ob + offs_m[:, None] * stride_on + offs_c[None, :] * stride_oc,
                    mask=mask, other=0.0)
        do = tl.load(dO + b * stride_dob + offs_m[:, None] * stride_don + offs_c[None, :] * stride_doc,
                     mask=mask, other=0.0)
        delta += tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + b * N_CTX + offs_m, delta, mask=m_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, dO, LSE, Delta, dK, dV,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vc,
    stride_dob, stride_don, stride_doc,
    stride_dkt, stride_dkb, stride_dkn, stride_dkd,
    stride_dvb, stride_dvn, stride_dvc,
    N_CTX, QK_DIM, V_DIM,
    QK_PAD: tl.constexpr, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dV (this column tile) and this tile's share of dK for one block of keys."""
    pid_n, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    DTYPE = V.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, QK_PAD)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask, d_mask, c_mask = offs_n < N_CTX, offs_d < QK_DIM, offs_c < V_DIM

    k = tl.load(K + b * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    v = tl.load(V + b * stride_vb + offs_n[:, None] * stride_vn + offs_c[None, :] * stride_vc,
                mask=n_mask[:, None] & c_mask[None, :], other=0.0)
    k, v = k.to(DOT_DTYPE), v.to(DOT_DTYPE)
    dk = tl.zeros([BLOCK_N, QK_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for start_m in range(0, N_CTX, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_mask = offs_m < N_CTX
        qT = tl.load(Q + b * stride_qb + offs_m[None, :] * stride_qn + offs_d[:, None] * stride_qd,
                     mask=d_mask[:, None] & m_mask[None, :], other=0.0)
        qT = qT.to(DOT_DTYPE)
        lse = tl.load(LSE + b * N_CTX + offs_m, mask=m_mask, other=0.0)
        pT = tl.exp2(tl.dot(k, qT, input_precision=PRECISION) * LOG2E - lse[None, :])
        pT = tl.where(m_mask[None, :], pT, 0.0)  # query rows past N
        do = tl.load(dO + b * stride_dob + offs_m[:, None] * stride_don + offs_c[None, :] * stride_doc,
                     mask=m_mask[:, None] & c_mask[None, :], other=0.0)
        do = do.to(DOT_DTYPE)
        dv = tl.dot(pT.to(DTYPE).to(DOT_DTYPE), do, dv, input_precision=PRECISION)
        # This tile's share of dP^T; delta is subtracted once, by the first tile.
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        delta = tl.load(Delta + b * N_CTX + offs_m, mask=m_mask, other=0.0)
        delta = tl.where(pid_c == 0, delta, 0.0)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(DTYPE).to(DOT_DTYPE), tl.trans(qT), dk, input_precision=PRECISION)
    tl.store(dK + pid_c * stride_dkt + b * stride_dkb + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(dK.dtype.element_ty), mask=n_mask[:, None] & d_mask[None, :])
    tl.store(dV + b * stride_dvb + offs_n[:, None] * stride_dvn + offs_c[None, :] * stride_dvc, dv.to(DTYPE),
             mask=n_mask[:, None] & c_mask[None, :])


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, dO, LSE, Delta, dQ,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vc,
    stride_dob, stride_don, stride_doc,
    stride_dqt, stride_dqb, stride_dqn, stride_dqd,
    N_CTX, QK_DIM, V_DIM,
    QK_PAD: tl.constexpr, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """This column tile's share of dQ for one block of queries."""
    pid_m, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    DTYPE = V.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, QK_PAD)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask, d_mask, c_mask = offs_m < N_CTX, offs_d < QK_DIM, offs_c < V_DIM

    q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    do = tl.load(dO + b * stride_dob + offs_m[:, None] * stride_don + offs_c[None, :] * stride_doc,
                 mask=m_mask[:, None] & c_mask[None, :], other=0.0)
    q, do = q.to(DOT_DTYPE), do.to(DOT_DTYPE)
    lse = tl.load(LSE + b * N_CTX + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(Delta + b * N_CTX + offs_m, mask=m_mask, other=0.0)
    delta = tl.where(pid_c == 0, delta, 0.0)  # subtracted once, by the first column tile
    dq = tl.zeros([BLOCK_M, QK_PAD], tl.float32)
    for start_n in range(0, N_CTX, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N_CTX
        kT = tl.load(K + b * stride_kb + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        vT = tl.load(V + b * stride_vb + offs_n[None, :] * stride_vn + offs_c[:, None] * stride_vc,
                     mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        kT, vT = kT.to(DOT_DTYPE), vT.to(DOT_DTYPE)
        p = tl.exp2(tl.dot(q, kT, input_precision=PRECISION) * LOG2E - lse[:, None])
        p = tl.where(n_mask[None, :], p, 0.0)  # keys past N
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(DTYPE).to(DOT_DTYPE), tl.trans(kT), dq, input_precision=PRECISION)
    tl.store(dQ + pid_c * stride_dqt + b * stride_dqb + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
             dq.to(dQ.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# --- launch configuration ----------------------------------------------------------------------
# Under the interpreter every program runs in Python: one small config keeps CI fast and still
# exercises multi-block loops, masked edge tiles and several column tiles. On GPU the autotuner
# picks among H100-sized tiles, pruned to what the sequence length can fill.
if INTERPRET:
    _FWD_CONFIGS = _BWD_CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=1)]
    _MAX_BLOCK_C = 32
else:
    _FWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(16, 16, 2, 2), (32, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3),
                             (128, 64, 8, 2), (128, 32, 4, 3)]
    ]
    _BWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(16, 16, 2, 2), (32, 32, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2),
                             (64, 64, 8, 3), (64, 128, 8, 2), (128, 64, 8, 2)]
    ]
    _MAX_BLOCK_C = 128


def _prune(configs, named_args, **kwargs):
    """Drop tiles larger than the (power-of-2 rounded) sequence; keep the smallest otherwise."""
    cap = max(16, triton.next_power_of_2(named_args["N_CTX"]))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= cap and c.kwargs["BLOCK_N"] <= cap]
    return kept or configs[:1]


def _autotune(configs, kernel):
    return triton.autotune(configs, key=["N_CTX", "QK_DIM", "V_DIM"], prune_configs_by={"early_config_prune": _prune})(
        kernel)


_fwd = _autotune(_FWD_CONFIGS, _fwd_kernel)
_bwd_dkdv = _autotune(_BWD_CONFIGS, _bwd_dkdv_kernel)
_bwd_dq = _autotune(_BWD_CONFIGS, _bwd_dq_kernel)


def _meta(q: torch.Tensor, v: torch.Tensor) -> dict:
    """Compile-time parameters shared by the kernels for these inputs."""
    if v.dtype == torch.float32:
        # fp32 follows PyTorch's matmul setting: exact fp32 unless TF32 is allowed.
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        precision = "tf32"  # ignored for 16-bit operands
    return dict(
        QK_PAD=max(16, triton.next_power_of_2(q.shape[2])),
        BLOCK_C=min(_MAX_BLOCK_C, max(16, triton.next_power_of_2(v.shape[2]))),
        # tl.dot operands: the input dtype, except under the interpreter, whose tl.dot multiplies
        # bf16 bit patterns (numpy has no bf16; triton-lang/triton#11584): there bf16 operands are
        # rounded to bf16 and widened to fp32, which gives the same products.
        DOT_DTYPE=tl.float32 if INTERPRET and v.dtype == torch.bfloat16 else _TL_DTYPES[v.dtype],
        PRECISION=precision,
    )


def _forward(q, k, v):
    batch, n, qk_dim = q.shape
    v_dim = v.shape[2]
    meta = _meta(q, v)
    out = torch.empty((batch, n, v_dim), device=v.device, dtype=v.dtype)
    lse = torch.empty((batch, n), device=v.device, dtype=torch.float32)
    grid = lambda META: (triton.cdiv(n, META["BLOCK_M"]), triton.cdiv(v_dim, meta["BLOCK_C"]), batch)  # noqa: E731
    _fwd[grid](q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), n, qk_dim, v_dim, **meta)
    return out, lse


def _backward(q, k, v, out, lse, grad_out):
    batch, n, qk_dim = q.shape
    v_dim = v.shape[2]
    meta = _meta(q, v)
    c_tiles = triton.cdiv(v_dim, meta["BLOCK_C"])

    delta = torch.empty_like(lse)
    pre_block_m, pre_block_c = 16 if INTERPRET else 64, meta["BLOCK_C"]
    _bwd_preprocess_kernel[(triton.cdiv(n, pre_block_m), batch)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), n, v_dim, BLOCK_M=pre_block_m, BLOCK_C=pre_block_c)

    # One column tile writes dQ/dK straight in the input dtype; several write fp32 partials.
    part_shape, part_dtype = (c_tiles, batch, n, qk_dim), (q.dtype if c_tiles == 1 else torch.float32)
    dq_part = torch.empty(part_shape, device=q.device, dtype=part_dtype)
    dk_part = torch.empty(part_shape, device=q.device, dtype=part_dtype)
    dv = torch.empty((batch, n, v_dim), device=v.device, dtype=v.dtype)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())

    grid = lambda META: (triton.cdiv(n, META["BLOCK_N"]), c_tiles, batch)  # noqa: E731
    _bwd_dkdv[grid](q, k, v, grad_out, lse, delta, dk_part, dv, *strides, *dk_part.stride(), *dv.stride(),
                    n, qk_dim, v_dim, **meta)
    grid = lambda META: (triton.cdiv(n, META["BLOCK_M"]), c_tiles, batch)  # noqa: E731
    _bwd_dq[grid](q, k, v, grad_out, lse, delta, dq_part, *strides, *dq_part.stride(), n, qk_dim, v_dim, **meta)

    if c_tiles == 1:
        return dq_part[0], dk_part[0], dv
    return dq_part.sum(0).to(q.dtype), dk_part.sum(0).to(k.dtype), dv


def _on_device(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class SaganAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        with _on_device(v):
            out, lse = _forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # backward(create_graph=True), e.g. an R1 penalty through attention
            raise RuntimeError("sagan_attention has no double backward; use impl='sdpa' or 'reference' where the "
                               "graph of the gradient is needed (create_graph=True)")
        q, k, v, out, lse = ctx.saved_tensors
        with _on_device(v):
            return _backward(q, k, v, out, lse, grad_out)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"expected q, k [B, N, Cqk] and v [B, N, C]; got {list(q.shape)}, {list(k.shape)}, "
                         f"{list(v.shape)}")
    if q.shape[0] == 0 or q.shape[1] == 0 or v.shape[2] == 0:
        raise ValueError(f"sagan_attention needs a non-empty batch, positions and channels; got v {list(v.shape)}")
    if q.shape[2] > MAX_QK_CHANNELS:
        raise ValueError(f"sagan_attention supports at most {MAX_QK_CHANNELS} q/k channels; got {q.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype) or v.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"sagan_attention needs q, k, v of one dtype among float16/bfloat16/float32; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if not v.is_cuda and not INTERPRET:
        raise RuntimeError(f"sagan_attention runs on CUDA tensors (got {v.device}); for CPU tensors set "
                           "TRITON_INTERPRET=1 before anything imports triton, or use impl='sdpa' or 'reference'")


def sagan_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v without scale, softmax over keys; q, k [B, N, Cqk], v [B, N, C] -> [B, N, C].

    Logits, softmax and accumulation in fp32; the output has v's dtype. Differentiable in q, k, v.
    """
    _check_inputs(q, k, v)
    return SaganAttention.apply(q, k, v)
