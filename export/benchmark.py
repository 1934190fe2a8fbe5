"""In-process throughput of the served function, engine by engine, side by side in one table:
PyTorch (eager or compiled, fp32 or bf16, CUDA graphs on CUDA) against ONNX Runtime (FP32, FP16; the
CUDA provider on CUDA) and TensorRT, at several batch sizes.

    python -m export.benchmark [--ckpt FILE | --run DIR] [--channels 16] [--batch-sizes 1,16,64,256]
                               [--engines pytorch,ort-fp32,...] [--seconds 2] [--windows 5] [--threads N] [--parity]

Every engine computes the served function latent FP32 [B, 128] (numpy) -> image UINT8 [B, 64, 64, 3]
(numpy), host to host, as the Python backend calls it. PyTorch runs the folded generator (spectral
norm and BatchNorm baked in) with the model's own attention ("auto": SDPA on CPU, the Triton kernel
on CUDA when available; compiled variants use SDPA, which Inductor traces) and converts to uint8 on
the device, so only uint8 pixels travel back (a quarter of the float bytes). "bf16" is autocast
(attention logits and softmax stay fp32, as in training). "compiled" is torch.compile(dynamic=True):
one compilation for every batch size. "cudagraphs" adds mode="reduce-overhead" (CUDA graphs: one
recorded graph per batch size, replayed without per-kernel launch cost). The ONNX graphs use the
exported "reference" attention (MatMul + Softmax). Without a checkpoint a freshly initialised
generator of --channels is timed (speed does not depend on the weights; its attention gammas are
set non-zero so --parity also covers the attention path).

Figures: every engine is built and warmed up first (compiling, and --parity); then, per batch size,
the engines take turns window by window (--windows rounds of >= --seconds / --windows each), so a
load that drifts during the run weighs on all of them alike. The table shows the median images/s,
the spread (min-max over the windows) and N; "x" is the median of the per-window ratios to eager
fp32 PyTorch ("pytorch") on the same device. --parity
adds each engine's worst uint8 level difference against the fp32 PyTorch reference (export.parity:
seeds 0-63 at batch 1, 7 and 64). Threads: torch and ONNX Runtime intra-op both use --threads
(default: the cores this process may run on).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from export import parity
from export.onnx_export import LatentToImage, convert_fp16, export_onnx, fold_generator
from export.pipeline import find_checkpoint, read_checkpoint
from training.networks.attention import set_attention_impl
from training.checkpoint import generator_from_checkpoint
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, Z_DIM
from training.latents import seeds_to_latents
from training.networks.sagan import Generator
from training.train import free_cores

# name -> (device, precision for parity); PyTorch engine options are parsed from the name.
TORCH_ENGINES = ("pytorch", "pytorch-compiled", "pytorch-bf16", "pytorch-bf16-compiled", "pytorch-bf16-cudagraphs")
ORT_ENGINES = ("ort-fp32", "ort-fp16")
TENSORRT_ENGINE = "tensorrt-fp16"
BASELINE = "pytorch"


def fresh_state(channels: int, seed: int = 0) -> dict:
    """A checkpoint-like dict of a freshly initialised generator (generator_from_checkpoint reads it).

    Attention gammas start at 0, which would hide the attention path from parity: set to 0.5.
    """
    torch.manual_seed(seed)
    generator = Generator(Z_DIM, channels)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("gamma"):
                parameter.fill_(0.5)
    return {"model": {"z_dim": Z_DIM, "channels": channels, "attention": True}, "G_ema": generator.state_dict()}


def window_rate(run, latents: np.ndarray, seconds: float) -> float:
    """images/s of run(latents) over one window of >= `seconds` and >= 1 batch. Every call returns
    host memory, so the window's end is the end of its GPU work too."""
    batches, start = 0, time.perf_counter()
    while batches < 1 or time.perf_counter() - start < seconds:
        run(latents)
        batches += 1
    return batches * len(latents) / (time.perf_counter() - start)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def throughput(run, latents: np.ndarray, seconds: float, warmup: int = 2, windows: int = 5) -> dict:
    """images/s of run(latents), one batch per call: median and spread over `windows` windows of
    seconds / windows each, after `warmup` calls."""
    for _ in range(warmup):
        run(latents)
    return rate_figures([window_rate(run, latents, seconds / windows) for _ in range(windows)])


def rate_figures(rates: list[float]) -> dict:
    """The figures of per-window images/s: median, min, max and the number of windows."""
    figure = spread(rates)
    return {"images_per_s": figure["median"], "min": figure["min"], "max": figure["max"], "windows": figure["n"]}


class TorchEngine:
    """The served function in PyTorch: numpy latents -> numpy uint8 images, uint8 made on the device.

    dtype "fp32" or "bf16" (autocast); compile None, "default" or "reduce-overhead" (CUDA graphs);
    channels-last on CUDA (the tensor-core layout for convolutions).
    """

    def __init__(self, generator: Generator, device: str | torch.device = "cpu", dtype: str = "fp32",
                 compile: str | None = None, attention: str = "auto"):
        self.device = torch.device(device)
        self.dtype = dtype
        model = LatentToImage(set_attention_impl(generator, attention)).to(self.device).eval()
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model, mode=compile, dynamic=True) if compile else model

    @torch.inference_mode()
    def __call__(self, latents: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            images = self.model(inputs)
        return images.cpu().numpy()  # also copies out of a CUDA graph's static output buffer


def torch_engine(name: str, make_generator, device: str) -> TorchEngine:
    """A TorchEngine from an engine name of TORCH_ENGINES (on a fresh folded generator)."""
    if name not in TORCH_ENGINES:
        raise ValueError(f"unknown PyTorch engine {name!r}; choose one of {TORCH_ENGINES}")
    compile_mode = "reduce-overhead" if name.endswith("cudagraphs") else "default" if name.endswith("compiled") else None
    return TorchEngine(fold_generator(make_generator()), device, dtype="bf16" if "bf16" in name else "fp32",
                       compile=compile_mode, attention="sdpa" if compile_mode else "auto")


def ort_runner(path: Path, provider: str, threads: int):
    """ONNX Runtime as served: the Python backend's own engine (serving/python_backend/engines.py)."""
    from serving.python_backend.engines import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(str(path), [provider], threads)
    if engine.providers[0] != provider:  # ONNX Runtime falls back silently
        raise RuntimeError(f"ONNX Runtime did not take {provider} (got {engine.providers})")
    return engine


def tensorrt_runner(onnx_path: Path, model: onnx.ModelProto, max_batch: int):
    """An FP16 TensorRT engine (attention and tail pinned to fp32, as `make export TRT=1` builds it),
    run by the served model's TensorRT engine."""
    from export import onnx_export, tensorrt_build
    from serving.python_backend.engines import TensorRTEngine

    settings = tensorrt_build.build_settings(max_batch=max(max_batch, 64), fp32_layer_names=onnx_export.tail_node_names(model))
    plan, _ = tensorrt_build.build_engine(onnx_path, settings)
    plan_path = onnx_path.with_name("generator.plan")
    plan_path.write_bytes(plan)
    return TensorRTEngine(str(plan_path), 0, (IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS))


def missing_engines(device: str) -> dict[str, str]:
    """Engines that cannot run on `device` here, each with the piece that is missing."""
    import onnxruntime as ort

    missing = {}
    if device == "cpu":
        missing["pytorch-bf16-cudagraphs"] = "CUDA graphs need a CUDA device"
        missing[TENSORRT_ENGINE] = "TensorRT needs a CUDA device"
    else:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = (f"ONNX Runtime {ort.__version__} has no CUDAExecutionProvider (providers "
                      f"{ort.get_available_providers()}): install onnxruntime-gpu (make setup-gpu)")
            missing.update({name: reason for name in ORT_ENGINES})
        from export.tensorrt_build import missing_requirements

        problem = missing_requirements()
        if problem:
            missing[TENSORRT_ENGINE] = problem
    return missing


def engine_factory(name: str, make_generator, device: str, fp32_path: Path, fp16_path: Path,
                   fp32_model: onnx.ModelProto, max_batch: int, threads: int):
    """A zero-argument factory for engine `name` on `device`."""
    if name in TORCH_ENGINES:
        return lambda: torch_engine(name, make_generator, device)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if name == "ort-fp32":
        return lambda: ort_runner(fp32_path, provider, threads)
    if name == "ort-fp16":
        def make_fp16():
            if not fp16_path.is_file():  # onnxconverter-common: only when this engine runs
                onnx.save(convert_fp16(fp32_model), str(fp16_path))
            return ort_runner(fp16_path, provider, threads)

        return make_fp16
    if name == TENSORRT_ENGINE:
        return lambda: tensorrt_runner(fp32_path, fp32_model, max_batch)
    raise ValueError(f"unknown engine {name!r}")


def engine_precision(name: str) -> str:
    """The parity thresholds an engine is held to (export.parity.THRESHOLDS)."""
    return "fp16" if ("bf16" in name or "fp16" in name) else "fp32"


def measure_engines(make_generator, engines: list[str], batch_sizes: list[int], device: str = "cpu",
                    seconds: float = 2.0, windows: int = 5, threads: int = 0, check_parity: bool = False,
                    deadline: float | None = None, log=print) -> dict[str, dict]:
    """Throughput (and optionally parity) of each engine at each batch size, side by side.

    All engines are built first (with parity, whose calls also compile and warm them up); then, per
    batch size, the engines take turns window by window (A B C, A B C, ...), so a load that drifts
    during the run (a shared machine) weighs on every engine alike; "x" per batch size is the
    median (and spread) of the per-round ratios to BASELINE.

    Returns {engine: {"status": "ok", "batches": {B: figures}, "parity": ... | None}} or
    {"status": "skipped" | "failed", "reason": ...}. One engine failing does not stop the others.
    deadline (time.monotonic()): engines not built by then are skipped, and no batch size starts
    after it (those measured are kept).
    """
    threads = threads or free_cores()
    missing = missing_engines(device)
    with tempfile.TemporaryDirectory(prefix="bamsgan-bench-") as scratch:
        if deadline is not None and time.monotonic() > deadline:
            missing.update({name: "budget spent before this engine started" for name in engines if name not in missing})
        results, runners = build_engines(make_generator, engines, missing, Path(scratch), device, max(batch_sizes), threads,
                                         check_parity, deadline, log)
        for batch in batch_sizes:
            if deadline is not None and time.monotonic() > deadline:
                for name in runners:
                    results[name]["stopped"] = f"budget spent before batch {batch}"
                break
            time_batch(runners, results, batch, seconds, windows, log)
        runners.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def build_engines(make_generator, engines: list[str], missing: dict[str, str], scratch: Path, device: str, max_batch: int,
                  threads: int, check_parity: bool, deadline: float | None, log) -> tuple[dict[str, dict], dict]:
    """Build every engine not `missing` (the ONNX graphs go into `scratch`), with its parity when asked:
    (results with each engine's status, {name: runner} of those ready)."""
    fp32_path, fp16_path = scratch / "generator.onnx", scratch / "generator_fp16.onnx"
    onnx_needed = any(not name.startswith("pytorch") and name not in missing for name in engines)
    fp32_model = export_onnx(fold_generator(make_generator()), fp32_path) if onnx_needed else None
    reference = latents = None
    if check_parity:
        latents = parity.parity_latents(Z_DIM)
        reference = parity.reference_images(set_attention_impl(make_generator(), "reference"), latents)
    results: dict[str, dict] = {}
    runners = {}
    for name in engines:
        if name not in missing and deadline is not None and time.monotonic() > deadline:
            missing[name] = "budget spent before this engine started"
        if name in missing:
            results[name] = {"status": "skipped", "reason": missing[name]}
            log(f"[bench] {name:<24} skipped: {missing[name]}")
            continue
        try:
            factory = engine_factory(name, make_generator, device, fp32_path, fp16_path, fp32_model, max_batch, threads)
            runners[name], results[name] = build_engine(name, factory, reference, latents, check_parity, log)
        except Exception as error:  # noqa: BLE001 - one engine's failure is a figure of the report
            record_failure(results, runners, name, error, log)
    return results, runners


def build_engine(name: str, factory, reference, latents, check_parity: bool, log) -> tuple[object, dict]:
    """Make one engine and check its parity when asked (which also compiles and warms it up): (runner, its result)."""
    started = time.perf_counter()
    run = factory()
    check = parity.engine_parity(run, reference, latents, engine_precision(name)) if check_parity else None
    result = {"status": "ok", "batches": {}, "parity": check, "setup_seconds": round(time.perf_counter() - started, 1)}
    log(f"[bench] {name:<24} ready in {result['setup_seconds']} s"
        + ("" if check is None else f", parity worst uint8 {check['worst']['uint8_max_diff']} levels: "
                                     f"{'pass' if check['passed'] else 'FAIL'}"))
    return run, result


def record_failure(results: dict[str, dict], runners: dict, name: str, error: Exception, log) -> None:
    """Engine `name` failed: record why (first line of the error), drop its runner, say so."""
    results[name] = {"status": "failed", "reason": f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"}
    runners.pop(name, None)
    log(f"[bench] {name:<24} failed: {results[name]['reason']}")


def time_batch(runners: dict, results: dict[str, dict], batch: int, seconds: float, windows: int, log) -> None:
    """One batch size: two warm-up rounds, then the engines take turns window by window; record each one's figures."""
    inputs = seeds_to_latents(range(batch), Z_DIM)
    rates = {name: [] for name in runners}
    for round_index in range(-2, windows):  # two warm-up rounds
        for name, run in list(runners.items()):
            try:
                if round_index < 0:
                    run(inputs)
                else:
                    rates[name].append(window_rate(run, inputs, seconds / windows))
            except Exception as error:  # noqa: BLE001
                record_failure(results, runners, name, error, log)
    for name in runners:
        figure = rate_figures(rates[name])
        if BASELINE in runners:
            figure["x"] = spread([a / b for a, b in zip(rates[name], rates[BASELINE])])
        results[name]["batches"][batch] = figure
        log(f"[bench] {name:<24} batch {batch:>5}: {figure['images_per_s']:10.1f} images/s "
            f"({figure['min']:.1f}-{figure['max']:.1f}, N={figure['windows']})")


def format_table(results: dict[str, dict], batch_sizes: list[int]) -> str:
    """One row per engine: median images/s (spread) and the ratio to BASELINE per batch size."""
    header = f"{'engine':<24}" + "".join(f"{f'B={b} img/s (min-max)':>28}{'x':>6}" for b in batch_sizes) + f"{'parity':>9}"
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        if result["status"] != "ok":
            lines.append(f"{name:<24}  {result['status']}: {result['reason']}")
            continue
        cells = ""
        for b in batch_sizes:
            if b not in result["batches"]:
                cells += f"{'-':>28}{'-':>6}"
                continue
            figure = result["batches"][b]
            ratio = figure["x"]["median"] if "x" in figure else float("nan")
            cells += f"{figure['images_per_s']:>10.1f} ({figure['min']:>7.1f}-{figure['max']:>7.1f}){ratio:>6.2f}"
        check = result.get("parity")
        verdict = "-" if check is None else f"{check['worst']['uint8_max_diff']} lv {'ok' if check['passed'] else 'FAIL'}"
        lines.append(f"{name:<24}{cells}{verdict:>9}")
    windows = {f["windows"] for r in results.values() if r["status"] == "ok" for f in r["batches"].values()}
    lines.append(f"(median images/s over N={'/'.join(map(str, sorted(windows))) or '-'} windows, min-max in brackets; the "
                 f"engines take turns window by window; x = median of the per-window ratios to {BASELINE}; "
                 f"parity = worst uint8 level difference against fp32 PyTorch)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.benchmark", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="checkpoint file (its EMA generator)")
    source.add_argument("--run", help="training run directory (its checkpoint-latest.pt)")
    parser.add_argument("--channels", type=int, default=16, help="width of a fresh generator when no checkpoint is given (default %(default)s)")
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--engines", default=None,
                        help=f"comma-separated among {', '.join(TORCH_ENGINES + ORT_ENGINES + (TENSORRT_ENGINE,))} "
                             "(default: pytorch, ort-fp32, ort-fp16, and on CUDA also the others)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per engine and batch size")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per engine and batch size (median, spread)")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime intra-op threads (default: free cores)")
    parser.add_argument("--parity", action="store_true", help="also check each engine against the fp32 PyTorch reference")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    if min(args.batch_sizes) < 1 or args.seconds <= 0 or args.windows < 1 or args.channels < 1 or args.threads < 0:
        parser.error("need positive --batch-sizes, --seconds, --windows, --channels and --threads >= 0")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    known = TORCH_ENGINES + ORT_ENGINES + (TENSORRT_ENGINE,)
    if args.engines is None:
        args.engines = list(known) if args.device == "cuda" else ["pytorch", "ort-fp32", "ort-fp16"]
    else:
        args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = [e for e in args.engines if e not in known]
        if unknown or not args.engines:
            parser.error(f"--engines: unknown {unknown}; choose among {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = args.threads or free_cores()
    torch.set_num_threads(threads)
    if args.ckpt or args.run:
        state, _ = read_checkpoint(find_checkpoint(run=args.run, ckpt=args.ckpt))
        source = f"checkpoint {args.ckpt or args.run} ({state['model']})"
    else:
        state = fresh_state(args.channels)
        source = f"fresh generator, channels={args.channels}"
    make_generator = lambda: generator_from_checkpoint(state)  # noqa: E731
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {threads} threads"
    print(f"[bench] {source}; {where}; torch {torch.__version__}", flush=True)
    load = os.getloadavg()[0]
    if args.device == "cpu" and load > free_cores() - 0.5:  # busy-waiting thread pools on oversubscribed cores
        print(f"[bench] warning: load average {load:.1f} on {free_cores()} cores; other processes compete for "
              "the CPU, figures are noisy (fewer --threads helps)", file=sys.stderr, flush=True)
    results = measure_engines(make_generator, args.engines, args.batch_sizes, args.device, args.seconds, args.windows,
                              threads, args.parity, log=lambda line: print(line, flush=True))
    print("\n" + format_table(results, args.batch_sizes))


if __name__ == "__main__":
    main()
