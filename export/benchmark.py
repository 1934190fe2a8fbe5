"""In-process throughput of the exported generator: PyTorch eager vs ONNX Runtime (FP32, FP16), and on
CUDA also ONNX Runtime's CUDA EP and TensorRT, at several batch sizes, in one table.

    python -m export.benchmark [--ckpt FILE | --run DIR] [--channels 16] [--batch-sizes 1,16,64,256]
                               [--seconds 2] [--threads N]

Every engine computes the served function latent FP32 [B, 128] -> image UINT8 [B, 64, 64, 3].
PyTorch eager runs the folded generator (spectral norm and BatchNorm baked in, fp32, no_grad) with
the model's own attention ("auto": SDPA on CPU, the Triton kernel on CUDA when available); the ONNX
graphs use the exported "reference" attention (MatMul + Softmax). Without a checkpoint a freshly
initialised generator of --channels is timed (speed does not depend on the weights). Threads: torch
and ONNX Runtime intra-op both use --threads (default: the cores this process may run on).
Images/s = batches x batch size / wall time over >= --seconds after warm-up, inputs prepared outside
the timed loop; "x" columns are the ratio to PyTorch on the same device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from export.onnx_export import LatentToImage, convert_fp16, export_onnx, fold_generator
from export.pipeline import find_checkpoint, read_checkpoint
from training.attention import set_attention_impl
from training.checkpoint import generator_from_checkpoint
from training.latents import seeds_to_latents
from training.networks import Generator
from training.train import free_cores


def throughput(run, latents: np.ndarray, seconds: float, warmup: int = 2, min_batches: int = 3) -> float:
    """images/s of run(latents) (one batch per call)."""
    for _ in range(warmup):
        run(latents)
    batches, start = 0, time.perf_counter()
    while batches < min_batches or time.perf_counter() - start < seconds:
        run(latents)
        batches += 1
    return batches * len(latents) / (time.perf_counter() - start)


def torch_runner(generator: Generator, device: str):
    model = LatentToImage(set_attention_impl(generator, "auto")).to(device).eval()

    def run(latents):
        with torch.no_grad():
            images = model(torch.from_numpy(latents).to(device))
        return images.cpu().numpy()  # includes the copy back, like every other engine

    return run


def ort_runner(path: Path, provider: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=[provider])
    return lambda latents: session.run(["image"], {"latent": latents})[0]


def tensorrt_runner(onnx_path: Path, model: onnx.ModelProto, max_batch: int):
    from export import onnx_export, tensorrt_build

    settings = tensorrt_build.build_settings(max_batch=max(max_batch, 64), fp32_layer_names=onnx_export.tail_node_names(model))
    plan, _ = tensorrt_build.build_engine(onnx_path, settings)
    return tensorrt_build.EngineRunner(plan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.benchmark", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="checkpoint file (its EMA generator)")
    source.add_argument("--run", help="training run directory (its checkpoint-latest.pt)")
    parser.add_argument("--channels", type=int, default=16, help="width of a fresh generator when no checkpoint is given (default %(default)s)")
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per engine and batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime intra-op threads (default: free cores)")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or free_cores()
    torch.set_num_threads(threads)

    if args.ckpt or args.run:
        state, _ = read_checkpoint(find_checkpoint(run=args.run, ckpt=args.ckpt))
        make_generator = lambda: generator_from_checkpoint(state)  # noqa: E731
        source = f"checkpoint {args.ckpt or args.run} ({state['model']})"
    else:
        make_generator = lambda: Generator(channels=args.channels).eval()  # noqa: E731
        source = f"fresh generator, channels={args.channels}"
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else "no CUDA"
    print(f"[bench] {source}; CPU threads {threads}; {device_name}; torch {torch.__version__}", flush=True)
    load = os.getloadavg()[0]
    if load > free_cores() - 0.5:  # busy-waiting thread pools on oversubscribed cores: 10-100x slowdowns
        print(f"[bench] warning: load average {load:.1f} on {free_cores()} cores; other processes compete for "
              "the CPU, figures are noisy (fewer --threads helps)", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        fp32_path, fp16_path = Path(scratch) / "generator.onnx", Path(scratch) / "generator_fp16.onnx"
        fp32_model = export_onnx(fold_generator(make_generator()), fp32_path)
        onnx.save(convert_fp16(fp32_model), str(fp16_path))

        import onnxruntime as ort

        engines = {  # name -> (device, factory)
            "pytorch": ("cpu", lambda: torch_runner(fold_generator(make_generator()), "cpu")),
            "ort-cpu fp32": ("cpu", lambda: ort_runner(fp32_path, "CPUExecutionProvider", threads)),
            "ort-cpu fp16": ("cpu", lambda: ort_runner(fp16_path, "CPUExecutionProvider", threads)),
        }
        if cuda:
            engines["pytorch cuda"] = ("cuda", lambda: torch_runner(fold_generator(make_generator()), "cuda"))
            if "CUDAExecutionProvider" in ort.get_available_providers():
                engines["ort-cuda fp32"] = ("cuda", lambda: ort_runner(fp32_path, "CUDAExecutionProvider", threads))
                engines["ort-cuda fp16"] = ("cuda", lambda: ort_runner(fp16_path, "CUDAExecutionProvider", threads))
            from export.tensorrt_build import missing_requirements

            if missing_requirements() is None:
                engines["tensorrt fp16"] = ("cuda", lambda: tensorrt_runner(fp32_path, fp32_model, max(batch_sizes)))

        results: dict[str, dict[int, float]] = {}
        for name, (device, factory) in engines.items():
            run = factory()
            results[name] = {}
            for batch in batch_sizes:
                latents = seeds_to_latents(range(batch), fp32_model.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
                results[name][batch] = throughput(run, latents, args.seconds)
                print(f"[bench] {name:<14} batch {batch:>4}: {results[name][batch]:10.1f} images/s", flush=True)
            del run

    baseline = {"cpu": "pytorch", "cuda": "pytorch cuda"}
    header = f"{'engine':<14}" + "".join(f"{f'B={b} img/s':>13}{'x':>6}" for b in batch_sizes)
    print("\n" + header + "\n" + "-" * len(header))
    for name, (device, _) in engines.items():
        cells = "".join(
            f"{results[name][b]:>13.1f}{results[name][b] / results[baseline[device]][b]:>6.2f}" for b in batch_sizes
        )
        print(f"{name:<14}{cells}")


if __name__ == "__main__":
    main()
