"""Training throughput and peak memory per attention implementation, or per process count, side by side in one run.

    python -m training.studies.bench_training [--preset cpu|paper] [--batch-size 64] [--steps 10] [--impls sdpa,reference]
    python -m training.studies.bench_training --processes 1,2 [--preset cpu] [--batch-size 64] [--steps 10]
    python -m training.studies.bench_training --variants eager,channels-last,compile,compile+channels-last [--threads 1,2]
    python -m training.studies.bench_training --variants channels-last,channels-last+bf16,channels-last+g_attention=16 --threads 2,1

Each implementation runs the full training step (G forward, one D call over real + fake + blur
+ memory, G step, EMA) on random uint8 images in a child process of its own, so peak memory is
that implementation's alone: CUDA's max_memory_allocated on a GPU, the process's peak RSS on CPU.
Prints a table with images/s (the mean of 3 timed windows, and their spread) and the ratio to the
reference (bmm + softmax) attention.

With --variants, each variant (a "+"-joined set of eager, channels-last, compile, bf16 — autocast
on CUDA or on a CPU with native bf16 — and FIELD=VALUE for any training config field, e.g.
batch_size=64, channels=32, g_attention=16) runs the same step at each --threads count: the choice
of the CPU preset's runtime defaults (channels_last, compile, threads, cpu_amp, batch size) rests on
this table (docs/results.md, "Training throughput per CPU").

With --processes, each count N trains the same global batch with N data-parallel processes
(`python -m training.distributed --standalone --nproc-per-node N -m training.train --bench STEPS`),
one GPU each, or on CPU the free cores shared out (threads per process = cores / N).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys

import torch

from training.config import PRESETS, TrainConfig
from training.hardware import cpu_description, free_cores, pick_device
from training.train import measure


def _measure_in_child(config: TrainConfig, steps: int, queue) -> None:
    queue.put(measure(config, steps))


def measure_processes(args, counts: list[int]) -> dict[int, dict]:
    """The training step with N processes for each N, each under torchrun (our launcher)."""
    results = {}
    for count in counts:
        threads = args.threads or max(1, free_cores() // count)
        command = [sys.executable, "-m", "training.distributed", "--standalone", "--nproc-per-node", str(count),
                   "-m", "training.train", "--bench", str(args.steps), "--preset", args.preset, "--batch-size",
                   str(args.batch_size), "--device", args.device, "--threads", str(threads), "--attention-impl", args.impls]
        if args.compile:
            command.append("--compile")
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"{count} processes: failed (exit code {done.returncode}): {done.stderr.strip()[-300:]}")
            continue
        results[count] = json.loads(lines[-1])
    return results


VARIANT_FLAGS = {"eager": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True},
                 "bf16": {"cpu_amp": True}}  # bf16: autocast on CUDA, and on a CPU with native bf16


def variant_flags(variant: str) -> dict:
    """'channels-last+bf16+batch_size=64' -> config fields: named parts, or any TrainConfig field=value."""
    flags = {"channels_last": False, "compile": False, "amp": False}
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for part in variant.split("+"):
        name, _, value = part.partition("=")
        if part in VARIANT_FLAGS:
            flags.update(VARIANT_FLAGS[part], amp=flags["amp"] or part == "bf16")
        elif value and name in fields:
            kind = {"int": int, "float": float, "bool": lambda text: text.lower() in ("1", "true", "yes")}.get(fields[name], str)
            flags[name] = kind(value)
        else:
            raise SystemExit(f"error: unknown variant part {part!r}; choose from {', '.join(VARIANT_FLAGS)} or FIELD=VALUE "
                             f"with a training config field (python -m training.train --help)")
    return flags


def measure_variants(args, variants: list[str], thread_counts: list[int]) -> dict[str, dict]:
    """The training step for each runtime variant x thread count, each in a child process of its own."""
    flags_by_variant = {variant: variant_flags(variant) for variant in variants}  # every name checked before any run
    context = multiprocessing.get_context("spawn")
    results = {}
    for threads in thread_counts:
        for variant, flags in flags_by_variant.items():
            config = dataclasses.replace(TrainConfig(**PRESETS[args.preset]), **{
                "preset": args.preset, "batch_size": args.batch_size, "device": args.device, "threads": threads, **flags})
            queue = context.Queue()
            child = context.Process(target=_measure_in_child, args=(config, args.steps, queue))
            child.start()
            child.join()
            name = f"{variant} @{threads}t"
            if child.exitcode != 0:
                print(f"{name}: failed (exit code {child.exitcode})")
                continue
            results[name] = queue.get()
            print(f"{name}: {results[name]['images_per_s']:.1f} images/s", flush=True)
    return results


def print_variants(args, results: dict[str, dict]) -> None:
    print(f"\ntraining step, preset {args.preset}, batch {args.batch_size}, 3 windows x {args.steps} steps, "
          f"CPU, {free_cores()} cores, {cpu_description()}")
    base = next(iter(results.values()), None)
    print(f"{'variant':<28} {'images/s':>10} {'spread (std)':>13} {'vs first':>9} {'peak MiB':>9}")
    for name, result in results.items():
        spread = statistics.stdev(result["windows"]) if len(result["windows"]) > 1 else float("nan")
        ratio = result["images_per_s"] / base["images_per_s"]
        print(f"{name:<28} {result['images_per_s']:>10.1f} {spread:>13.1f} {ratio:>8.2f}x {result['peak_mib']:>9.0f}")
    print(json.dumps(results))


def print_processes(args, results: dict[int, dict]) -> None:
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {free_cores()} cores"
    print(f"\ntraining step, preset {args.preset}, attention {args.impls}, global batch {args.batch_size}, "
          f"3 windows x {args.steps} steps, {where}")
    base = results.get(1)
    print(f"{'processes':>9} {'threads each':>12} {'images/s':>10} {'spread (std)':>13} {'vs 1 process':>13}")
    for count, result in results.items():
        ratio = result["images_per_s"] / base["images_per_s"] if base else float("nan")
        spread = statistics.stdev(result["windows"]) if len(result["windows"]) > 1 else float("nan")
        print(f"{count:>9} {result['threads']:>12} {result['images_per_s']:>10.1f} {spread:>13.1f} {ratio:>12.2f}x")
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--impls", help="comma-separated: reference, sdpa, kernel (default reference,sdpa; "
                                         "with --processes one of them or auto, the default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", default="0", help="CPU threads (0 = the free cores); with --variants a comma-separated list")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--variants", help="comma-separated variants, e.g. eager,channels-last+bf16,channels-last+batch_size=64")
    parser.add_argument("--processes", help="comma-separated process counts to compare (data-parallel, torchrun), e.g. 1,2")
    args = parser.parse_args()
    try:
        thread_counts = [int(count) for count in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes whole numbers separated by commas, got {args.threads!r}")
    if args.variants:
        print_variants(args, measure_variants(args, args.variants.split(","), thread_counts))
        return
    args.threads = thread_counts[0]
    if args.processes:
        args.impls = args.impls or "auto"
        print_processes(args, measure_processes(args, [int(count) for count in args.processes.split(",")]))
        return

    impls = (args.impls or "reference,sdpa").split(",")
    context = multiprocessing.get_context("spawn")
    results = {}
    for impl in impls:
        config = dataclasses.replace(TrainConfig(**PRESETS[args.preset]), preset=args.preset, batch_size=args.batch_size,
                                     attention_impl=impl, device=args.device, threads=args.threads, compile=args.compile)
        queue = context.Queue()
        child = context.Process(target=_measure_in_child, args=(config, args.steps, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"{impl}: failed (exit code {child.exitcode})")
            continue
        results[impl] = queue.get()

    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads or free_cores()} threads"
    print(f"\ntraining step, preset {args.preset}, batch {args.batch_size}, {args.steps} timed steps, {where}")
    base = results.get("reference")
    print(f"{'attention':<10} {'images/s':>10} {'vs reference':>13} {'peak MiB':>10}  memory measured as")
    for impl, result in results.items():
        ratio = result["images_per_s"] / base["images_per_s"] if base else float("nan")
        print(f"{impl:<10} {result['images_per_s']:>10.1f} {ratio:>12.2f}x {result['peak_mib']:>10.0f}  {result['memory_kind']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
