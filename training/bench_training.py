"""Training throughput and peak memory per attention implementation, side by side in one run.

    python -m training.bench_training [--preset cpu|paper] [--batch-size 64] [--steps 10] [--impls sdpa,reference]

Each implementation runs the full training step (G forward, one D call over real + fake + blur
+ memory, G step, EMA) on random uint8 images in a child process of its own, so peak memory is
that implementation's alone: CUDA's max_memory_allocated on a GPU, the process's peak RSS on CPU.
Prints a table with images/s and the ratio to the reference (bmm + softmax) attention.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import resource
import time

import torch

from training.config import PRESETS, TrainConfig
from training.train import Trainer, free_cores, pick_device


def measure(config: TrainConfig, steps: int) -> dict:
    """Time `steps` full training steps after 3 warm-up steps; images/s and peak memory."""
    device = pick_device(config.device)
    torch.set_num_threads(config.threads or free_cores())
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (max(512, 4 * config.batch_size), 3, 64, 64), dtype=torch.uint8, generator=generator)
    trainer = Trainer(config, pixels, pixels[: len(pixels) // 10], device)
    if trainer.memory is not None:  # time the full four-term step: memory filled and replayed
        trainer.epoch = config.memory_replay_epoch
        trainer.memory.add(torch.rand(config.memory_capacity, 3, 64, 64, device=device) * 2 - 1)
    order = trainer.epoch_order(0)
    batches = [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(len(order) // config.batch_size)]
    for index in range(3):  # warm-up: allocator, autotuning, torch.compile
        trainer.step(batches[index % len(batches)])
    if trainer.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for index in range(steps):
        trainer.step(batches[index % len(batches)])
    if trainer.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mib = (torch.cuda.max_memory_allocated() if trainer.cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"images_per_s": steps * config.batch_size / seconds, "peak_mib": peak_mib,
            "memory_kind": "CUDA max allocated" if trainer.cuda else "process peak RSS"}


def _measure_in_child(config: TrainConfig, steps: int, queue) -> None:
    queue.put(measure(config, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--impls", default="reference,sdpa", help="comma-separated: reference, sdpa, kernel")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    impls = args.impls.split(",")
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
