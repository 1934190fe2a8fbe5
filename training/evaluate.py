"""Evaluate a generator's faces against real faces (`make evaluate`): one line per metric, plus JSON.

    python -m training.evaluate --run runs/NAME --real '../shared/data/anime-faces-64/shard-008.tar' --count 5000
    python -m training.evaluate --checkpoint runs/NAME/checkpoints/epoch-0040.pt --real synthetic
    python -m training.evaluate --version model_repository/bamsgan/3 --real ... --inception-weights pt_inception-2015-12-05-6726825d.pth
    python -m training.evaluate --url localhost:8001 --real ...

The source of the faces is a run directory (its checkpoint-latest.pt), a checkpoint, an exported
model version (its generator.onnx, run with ONNX Runtime) or the live Triton server. Every path
draws seeds 0..N-1 through the one seed->latent mapping (training/latents.py), so the same model
gives the same faces, and the same figures, whichever way it is reached. The metrics are
training/metrics.py's; each figure carries its N and its uncertainty.

The real faces are any training.dataset.load_images source (--real, default: the model's training
data, with a warning: figures on faces the model trained on flatter it). Synthetic reals are drawn
with --real-seed, by default one the trainer does not use, so they are held out.

Speed on the 2-core CPU (N=10,000, real statistics cached; measured 2026-11-29): the weight-free
metrics together take ~80 s (swd ~520 faces/s, detector ~100-400, diversity ~4,400, sharpness
~5,400); Inception-v3 features run at ~8 faces/s, so FID/KID add ~20 min for 10,000 faces (the
real set's features once more on the first run, then cached).

Bad input (a missing run, checkpoint, weights or detector file, a foreign or truncated checkpoint, an
unreachable server, unreadable data) is one line on stderr and exit code 2; the JSON is written
atomically at the end, so a failed evaluation leaves nothing behind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from training import metrics
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE
from training.metrics import METRIC_NAMES, MetricsError

RESULT_FORMAT = "bamsgan-evaluation"
DEFAULT_COUNT = 1000
HELD_OUT_SYNTHETIC_SEED = 1_000_003  # synthetic reals from a seed no training run uses by default (they use --seed, 0)
METRIC_GROUPS = (("fid", "kid"), ("swd",), ("sharpness",), ("diversity",), ("detector",))  # fid and kid share features


class EvaluationError(ValueError):
    """Bad input to the evaluation, in one line."""


# ----------------------------------------------------------------------------------------------
# Sources of generated faces: each returns (faces uint8 [N, 64, 64, 3], description dict, training config or None).


def faces_from_checkpoint(path: Path, count: int, batch_size: int, device: str, progress: bool, weights: str = "G_ema"):
    from training.checkpoint import CheckpointError, generator_from_checkpoint, load_checkpoint

    try:
        state = load_checkpoint(path)
        if weights not in state:
            raise CheckpointError(f"{path} has no {weights} weights (a released generator holds G_ema only)")
        generator = generator_from_checkpoint(state, ema=weights == "G_ema").to(device)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    faces = metrics.faces_from_generator(generator, count, batch_size, device, progress=progress)
    source = {"kind": "checkpoint", "path": str(path.resolve()), "weights": weights, "epoch": state["epoch"], "step": state["step"]}
    return faces, source, state.get("config") or None


def faces_from_run(run: Path, count: int, batch_size: int, device: str, progress: bool, weights: str = "G_ema"):
    if not run.is_dir():
        raise EvaluationError(f"no run directory at {run}")
    checkpoint = run / "checkpoint-latest.pt"
    if not checkpoint.exists():
        raise EvaluationError(f"run {run} has no checkpoint ({checkpoint.name}); train it first or pass --checkpoint")
    faces, source, config = faces_from_checkpoint(checkpoint, count, batch_size, device, progress, weights)
    return faces, {**source, "kind": "run", "run": str(run.resolve())}, config


def faces_from_version(version: Path, count: int, batch_size: int, progress: bool):
    """Faces from an exported version's generator.onnx (ONNX Runtime, CPU), as the served model computes them."""
    import onnxruntime as ort
    from tqdm import tqdm

    from training.latents import seeds_to_latents

    if version.is_dir() and not (version / "metadata.json").exists():  # a model folder: its newest version
        from export.repository import versions

        numbers = versions(version)
        version = version / str(numbers[-1]) if numbers else version
    metadata_path, onnx_path = version / "metadata.json", version / "generator.onnx"
    if not metadata_path.is_file() or not onnx_path.is_file():
        raise EvaluationError(f"{version} is not an exported model version (needs metadata.json and generator.onnx; make export writes them)")
    try:
        metadata = json.loads(metadata_path.read_text())
        z_dim, input_name, output_name = metadata["z_dim"], metadata["io"]["input"]["name"], metadata["io"]["output"]["name"]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except (ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"{metadata_path} is not a model version's metadata: {error}") from None
    except Exception as error:  # onnxruntime raises its own exception types for a damaged model file
        raise EvaluationError(f"{onnx_path} cannot be loaded by ONNX Runtime: {str(error).splitlines()[0]}") from None
    faces = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), np.uint8)
    for start in tqdm(range(0, count, batch_size), desc="generating (onnx)", unit="batch", disable=not progress, leave=False):
        seeds = np.arange(start, min(start + batch_size, count))
        (faces[start : start + len(seeds)],) = session.run([output_name], {input_name: seeds_to_latents(seeds, z_dim)})
    source = {"kind": "version", "path": str(version.resolve()), "epoch": metadata.get("epoch"), "step": metadata.get("step"),
              "checkpoint": (metadata.get("source") or {}).get("checkpoint")}
    return faces, source, metadata.get("training_config") or None


def faces_from_server(url: str, count: int, model: str, timeout: float, progress: bool):
    from clients.generate import TritonClientError, request_faces

    try:
        faces = request_faces(url, np.arange(count), model=model, timeout=timeout, progress=progress)
    except (TritonClientError, ValueError) as error:  # ValueError: a malformed --url
        raise EvaluationError(str(error)) from None
    return faces, {"kind": "server", "url": url, "model": model}, None


# ----------------------------------------------------------------------------------------------
# Real faces.


def _same_inputs(spec: str, other: str) -> bool:
    """Whether two load_images specs share an image file (so the real set overlaps the training data)."""
    from training.dataset import find_inputs

    try:
        return bool(set(find_inputs(spec)) & set(find_inputs(other)))
    except (FileNotFoundError, OSError):
        return False


def load_reals(spec: str | None, count: int, n: int, seed: int | None, config: dict | None, progress: bool):
    """(uint8 [M, 64, 64, 3] reals, description dict, warnings): at most `count`, first in sorted order; warns under `n`."""
    from training.dataset import load_images

    warnings = []
    training_data = (config or {}).get("data")
    if spec is None:
        if training_data is None:
            raise EvaluationError("say which real faces to compare with: --real SPEC (a folder, a .tar, a glob of shards, or 'synthetic')")
        spec = training_data
    synthetic = spec == "synthetic"
    seed = HELD_OUT_SYNTHETIC_SEED if seed is None else seed
    try:
        images = load_images(spec, max_images=count, synthetic_size=count, seed=seed, progress=progress,
                             cache_dir=(config or {}).get("cache_dir"))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise EvaluationError(f"cannot load the real faces {spec!r}: {error}") from None
    trained_on = None  # unknown: a served model does not say what it trained on
    if training_data is not None:
        if synthetic:
            trained_on = training_data == "synthetic" and seed == (config or {}).get("seed", 0)
        else:
            trained_on = training_data != "synthetic" and _same_inputs(spec, training_data)
        if trained_on:
            warnings.append(f"the real faces {spec!r} are (or overlap) this model's training data: figures on faces it trained on flatter it")
    if len(images) < n:
        warnings.append(f"{len(images)} real faces from {spec!r}, fewer than N={n}: the figures use {len(images)} real faces")
    description = {"source": spec, "count": len(images), "cache_key": images.cache_key, "training_data": trained_on}
    if synthetic:
        description["seed"] = seed
    return images.pixels.numpy().transpose(0, 2, 3, 1), description, warnings


# ----------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def check_output(path: Path) -> None:
    """Refuse to replace a file that is not an earlier evaluation (a user's file is never overwritten)."""
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("format") == RESULT_FORMAT
        except (ValueError, OSError, AttributeError):
            ours = False
        if not ours:
            raise EvaluationError(f"{path} exists and is not an earlier evaluation; choose another --out")


def evaluate(args: argparse.Namespace) -> dict:
    names = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else list(METRIC_NAMES)
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if args.run is not None and not args.run.strip():  # make evaluate with no runs/ yet
        raise EvaluationError("no run directory given (runs/ has none yet: train one first, or pass --checkpoint)")
    if args.url and args.real is None:
        raise EvaluationError("a served model does not say what it trained on: give the real faces with --real SPEC")
    if args.count < 2 or args.batch_size < 1:
        raise EvaluationError(f"--count must be at least 2 and --batch-size at least 1, got {args.count} and {args.batch_size}")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise EvaluationError(f"--device {args.device}: no CUDA device on this machine; use --device cpu")
    kind = next(kind for kind in ("run", "checkpoint", "version", "url") if getattr(args, kind))
    name = f"n{args.count}" + ("-live-G" if args.weights == "G" else "")
    default_out = Path(args.run) / f"evaluation-{name}.json" if args.run else Path("out") / f"evaluation-{kind}-{name}.json"
    out = Path(args.out) if args.out else default_out
    check_output(out)
    # Files first: a missing one fails in a second, not after generating thousands of faces.
    detector = metrics.find_detector(args.detector) if "detector" in names else None
    weights = metrics.find_inception_weights(args.inception_weights) if {"fid", "kid"} & set(names) else None
    if weights is not None:
        metrics.feature_network(Path(weights))  # loaded once per process; compute_metrics reuses it
    if detector is not None:
        metrics.load_detector(detector)

    started = time.perf_counter()
    if args.run:
        faces, source, config = faces_from_run(Path(args.run), args.count, args.batch_size, args.device, args.progress, args.weights)
    elif args.checkpoint:
        faces, source, config = faces_from_checkpoint(Path(args.checkpoint), args.count, args.batch_size, args.device, args.progress,
                                                      args.weights)
    elif args.version:
        faces, source, config = faces_from_version(Path(args.version), args.count, args.batch_size, args.progress)
    else:
        faces, source, config = faces_from_server(args.url, args.count, args.model, args.timeout, args.progress)
    generate_s = time.perf_counter() - started
    reals, real, warnings = load_reals(args.real, args.real_count or args.count, args.count, args.real_seed, config, args.progress)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    results, seconds = {}, {"generate": generate_s}
    for group in METRIC_GROUPS:
        wanted = [name for name in group if name in names]
        if not wanted:
            continue
        started = time.perf_counter()
        results.update(metrics.compute_metrics(faces, reals, wanted, detector=detector, inception_weights=weights,
                                               real_key=real["cache_key"], seed=args.seed, progress=args.progress))
        if all(results[name]["value"] is not None for name in wanted):
            seconds["+".join(wanted)] = time.perf_counter() - started
    return {
        "format": RESULT_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": args.count,
        "seeds": [0, args.count - 1],
        "source": source,
        "real": real,
        "warnings": warnings,
        "metrics": {name: results[name] for name in names},
        "seconds": seconds,
        "faces_per_second": {step: args.count / max(s, 1e-9) for step, s in seconds.items()},
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Face-quality metrics of a generator against real faces (one line per metric, plus JSON).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory: evaluates its checkpoint-latest.pt (G-EMA)")
    source.add_argument("--checkpoint", help="checkpoint file (G-EMA)")
    parser.add_argument("--weights", choices=("G_ema", "G"), default="G_ema",
                        help="with --run/--checkpoint: the EMA generator (default, what export serves) or the live G")
    source.add_argument("--version", help="exported model version directory (model_repository/bamsgan/N; a model folder: its newest)")
    source.add_argument("--url", help="live Triton server HOST:PORT (gRPC)")
    parser.add_argument("--real", help="real faces: a folder, .tar, glob of shards, or 'synthetic' (default: the model's training data)")
    parser.add_argument("--real-count", type=int, default=None, help="real faces to use (default: --count)")
    parser.add_argument("--real-seed", type=int, default=None, help="seed of synthetic real faces (default: a held-out one)")
    parser.add_argument("--count", "-n", type=int, default=DEFAULT_COUNT, help="generated faces, seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--metrics", default=None, help=f"comma-separated subset of {','.join(METRIC_NAMES)} (default: all)")
    parser.add_argument("--detector", default=None, help="lbpcascade_animeface.xml (default: $BAMSGAN_DETECTOR, data/, ../shared/models/)")
    parser.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth for FID/KID (default: $BAMSGAN_INCEPTION_WEIGHTS)")
    parser.add_argument("--out", default=None, help="JSON results (default: RUN/evaluation-nN.json for --run, else out/evaluation-KIND-nN.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the metrics' own sampling (patches, bootstrap)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="torch device for --run/--checkpoint (default: %(default)s)")
    parser.add_argument("--model", default="bamsgan", help="served model name for --url (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per gRPC call for --url (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args)
    except (EvaluationError, MetricsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    src = result["source"]
    where = src.get("path") or src.get("url")
    trained = {True: ", the training data", False: ", held out from training", None: ""}[result["real"]["training_data"]]
    print(f"generated: {result['n']} faces (seeds 0-{result['n'] - 1}) from {src['kind']} {where}"
          + (f" (epoch {src['epoch']}, step {src['step']})" if src.get("step") is not None else ""))
    print(f"real:      {result['real']['count']} faces from {result['real']['source']}{trained}")
    for name, entry in result["metrics"].items():
        print(metrics.format_metric(name, entry))
    speed = ", ".join(f"{step} {rate:.0f}" for step, rate in result["faces_per_second"].items())
    print(f"speed (faces/s, this machine): {speed}")
    write_json_atomic(Path(result["out"]), result)
    print(f"wrote {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
