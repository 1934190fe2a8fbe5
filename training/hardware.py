"""What this machine can do, detected, never assumed: the device a run uses, the cores it may use,
and whether the CPU computes bf16 natively.

One definition for the trainer, the benchmarks, the Inception backends and the metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot products


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux x86; elsewhere: none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(text.split())


def cpu_has_native_bf16() -> bool:
    """Whether the CPU lists avx512_bf16 or amx_bf16: elsewhere bf16 is emulated and slower than fp32."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cpu_description() -> str:
    """'AMD EPYC (avx2, avx512f, avx512_bf16)': the model name and the flags that decide the fast paths."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    flags = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in cpu_flags()]
    return f"{model} ({', '.join(flags) or 'no AVX'})"


def free_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """'auto' | 'cpu' | 'cuda[:N]' -> a device; under torchrun (`local_rank`) one GPU per process."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
