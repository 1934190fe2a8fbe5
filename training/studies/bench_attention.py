"""Benchmark SAGAN attention: forward+backward (and forward) time and memory per implementation.

    python -m training.studies.bench_attention                          # attention at the models' shapes
    python -m training.studies.bench_attention --passes forward,forward+backward
    python -m training.studies.bench_attention --whole-model            # Generator/Discriminator images/s
    python -m training.studies.bench_attention --device cpu --batch-sizes 16 --repeats 2

`measure_shapes(...)` returns the same figures as records (clients.gpu_check reports them).
Times: the median of --repeats runs after --warmup runs, with the spread (min-max); on CUDA each
run is timed with CUDA events (GPU time, no host-side launch gaps counted), on CPU with the wall clock.

Each implementation runs through training.attention.attention(q, k, v, impl), as SelfAttention2d
calls it, on q, k, v split from one fused projection (strided views, like the module's). "sdpa"
casts to fp32 by design (see training/networks/attention.py), whatever --dtype is.

Memory: on CUDA, the peak of torch.cuda.max_memory_allocated during one forward+backward minus what
was allocated before it (the inputs). On CPU there is no allocator peak to read, so the figure is
the largest single tensor any ATen op allocates during one forward+backward (recorded with a
TorchDispatchMode): for "reference" that is the [B, N, N] fp32 attention matrix.

The Triton kernel is timed on CUDA only: on CPU it would run through the Triton interpreter
(Python per program instance), whose timings say nothing about the kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from training.networks.attention import _kernel_available, attention, set_attention_impl
from training.constants import Z_DIM
from training.networks.sagan import Discriminator, Generator

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_shapes(channels: int) -> list[tuple[str, int, int]]:
    """(name, positions N, value channels C) of every attention block; q/k have C/8 channels."""
    return [
        (f"G 16x16 C={2 * channels}", 16 * 16, 2 * channels),
        (f"G 32x32 C={channels}", 32 * 32, channels),
        (f"D 8x8 C={4 * channels}", 8 * 8, 4 * channels),
        (f"D 4x4 C={8 * channels}", 4 * 4, 8 * channels),
    ]


class _LargestTensor(TorchDispatchMode):
    """Records the largest storage any ATen op allocates (views excluded) while active."""

    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():
                self.nbytes = max(self.nbytes, tensor.untyped_storage().nbytes())
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs_ms(step, device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of `repeats` runs of step(), after `warmup` runs (which also trigger
    Triton autotuning): CUDA events on CUDA, the wall clock around a synchronised run elsewhere."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - start))
    return times


def time_ms(step, device: torch.device, repeats: int, warmup: int) -> float:
    """Median time of step() in milliseconds (see time_runs_ms)."""
    return statistics.median(time_runs_ms(step, device, repeats, warmup))


def memory_mib(step, device: torch.device) -> float:
    """Extra peak memory of one step on CUDA; largest tensor allocated by one op on CPU (module doc)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with _LargestTensor() as recorder:
        step()
    return recorder.nbytes / 2**20


def available_impls(device: torch.device) -> tuple[list[str], str | None]:
    """Implementations to run here, and why the kernel is left out (None if it runs)."""
    if device.type != "cuda":
        return ["reference", "sdpa"], ("kernel skipped on CPU: it would run in the Triton interpreter, "
                                       "whose timings mean nothing")
    if not _kernel_available():
        return ["reference", "sdpa"], "kernel skipped: OpenAI Triton is not installed"
    return ["reference", "sdpa", "kernel"], None


PASSES = ("forward", "forward+backward")


def attention_step(batch: int, n: int, channels: int, impl: str, device: torch.device, dtype: torch.dtype,
                   backward: bool = True):
    """One forward+backward (or, backward=False, one no-grad forward) of the attention core on views
    of a fused [B, N, 2*Cqk + C] projection."""
    qk_channels = max(1, channels // 8)
    qkv = torch.randn(batch, 2 * qk_channels + channels, n, device=device, dtype=dtype)
    qkv = qkv.transpose(1, 2).requires_grad_(backward)  # the module's layout: channels strided by N
    grad_out = torch.randn(batch, n, channels, device=device, dtype=dtype) if backward else None

    def step():
        q, k, v = qkv.split([qk_channels, qk_channels, channels], dim=2)
        if not backward:
            with torch.no_grad():
                return attention(q, k, v, impl)
        qkv.grad = None
        attention(q, k, v, impl).backward(grad_out)

    return step


def measure_shapes(channels: int, batch_sizes: list[int], impls: list[str], device: torch.device, dtype: torch.dtype,
                   passes: tuple[str, ...] = ("forward+backward",), repeats: int = 20, warmup: int = 3) -> list[dict]:
    """Time and memory of every impl at every attention shape of G and D (model width `channels`),
    one record per (shape, batch, pass, impl); ratios against the first impl ("reference" first)."""
    records = []
    for name, n, width in model_shapes(channels):
        for batch in batch_sizes:
            for pass_name in passes:
                base = None
                for impl in impls:
                    step = attention_step(batch, n, width, impl, device, dtype, backward=pass_name != "forward")
                    times = time_runs_ms(step, device, repeats, warmup)
                    record = {"shape": name, "n": n, "qk_channels": max(1, width // 8), "channels": width, "batch": batch,
                              "pass": pass_name, "impl": impl, "dtype": str(dtype).removeprefix("torch."),
                              "ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "repeats": len(times),
                              "mib": memory_mib(step, device)}
                    base = base or record
                    record["speedup_vs_" + base["impl"]] = base["ms"] / record["ms"]
                    record["memory_vs_" + base["impl"]] = record["mib"] / base["mib"] if base["mib"] else float("nan")
                    records.append(record)
                    del step
    return records


def format_records(records: list[dict]) -> str:
    """The measure_shapes records as a table: median ms (min-max), MiB, ratios to the reference."""
    header = (f"{'shape':<16} {'Cqk':>4} {'batch':>5} {'pass':<16} {'impl':<9} {'ms':>9} {'(min-max)':>17} "
              f"{'vs ref':>7} {'MiB':>9} {'vs ref':>7}")
    lines = [header, "-" * len(header)]
    for r in records:
        spread = f"({r['ms_min']:.3f}-{r['ms_max']:.3f})"
        lines.append(f"{r['shape']:<16} {r['qk_channels']:>4} {r['batch']:>5} {r['pass']:<16} {r['impl']:<9} {r['ms']:>9.3f} "
                     f"{spread:>17} {r['speedup_vs_reference']:>6.2f}x {r['mib']:>9.2f} {r['memory_vs_reference']:>6.2f}x")
    return "\n".join(lines)


def bench_attention(args, device: torch.device, dtype: torch.dtype) -> None:
    impls, note = available_impls(device)
    memory_what = "extra peak CUDA memory" if device.type == "cuda" else "largest tensor one op allocates"
    print(f"attention {', '.join(args.passes)}: device={device} dtype={args.dtype} repeats={args.repeats} "
          f"(median ms, min-max); memory = {memory_what} (MiB); 'vs ref' = reference / impl (time: speedup), "
          f"impl / reference (memory)")
    if note:
        print(note)
    records = measure_shapes(args.channels, args.batch_sizes, impls, device, dtype, tuple(args.passes), args.repeats, args.warmup)
    print(format_records(records), flush=True)


def bench_whole_model(args, device: torch.device, dtype: torch.dtype) -> None:
    impls, note = available_impls(device)
    autocast = dtype != torch.float32
    print(f"whole model forward+backward (train mode): device={device} channels={args.channels} "
          f"{'autocast ' + args.dtype if autocast else 'float32'} repeats={args.repeats} (median); "
          f"'vs ref' = images/s relative to reference")
    if note:
        print(note)
    header = f"{'model':<13} {'batch':>5}  {'impl':<9} {'ms':>9} {'images/s':>10} {'vs ref':>7}"
    print(header)
    print("-" * len(header))
    torch.manual_seed(0)
    models = {
        "Generator": Generator(Z_DIM, args.channels).to(device),
        "Discriminator": Discriminator(args.channels).to(device),
    }
    for name, model in models.items():
        model.train()
        for batch in args.batch_sizes:
            inputs = torch.randn(batch, Z_DIM, device=device) if name == "Generator" else \
                torch.randn(batch, 3, 64, 64, device=device)
            reference_rate = None
            for impl in impls:
                set_attention_impl(model, impl)

                def step():
                    model.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                        loss = model(inputs).float().mean()
                    loss.backward()

                ms = time_ms(step, device, args.repeats, args.warmup)
                rate = batch / (ms / 1e3)
                reference_rate = reference_rate or rate
                print(f"{name:<13} {batch:>5}  {impl:<9} {ms:>9.2f} {rate:>10.1f} {rate / reference_rate:>6.2f}x",
                      flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="64,256",
                        type=lambda text: [int(b) for b in text.split(",")], help="comma-separated (default 64,256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="input dtype (whole model: autocast dtype); default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (also Triton autotuning)")
    parser.add_argument("--channels", type=int, default=64, help="model width c (the paper's model: 64)")
    parser.add_argument("--passes", default="forward+backward", type=lambda text: text.split(","),
                        help=f"comma-separated among {', '.join(PASSES)} (default forward+backward)")
    parser.add_argument("--whole-model", action="store_true",
                        help="time Generator/Discriminator forward+backward per impl instead")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.repeats < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        parser.error("--repeats and --batch-sizes must be positive, --warmup non-negative")
    if not args.passes or any(p not in PASSES for p in args.passes):
        parser.error(f"--passes: choose among {', '.join(PASSES)}")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} CPU threads")
    if args.whole_model:
        bench_whole_model(args, device, dtype)
    else:
        bench_attention(args, device, dtype)


if __name__ == "__main__":
    main()
