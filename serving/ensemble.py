"""`python -m serving.ensemble`: the full-Triton ensemble repository from a published model version.

    python -m serving.ensemble --from model_repository/bamsgan/3 [--to serving/ensemble_repository] [--engine onnx|tensorrt]

For NVIDIA's Triton container, whose native onnxruntime / tensorrt_plan backends run the
generator without Python in the loop. The repository serves the same client contract as
model_repository/ (model `bamsgan`: SEED, optional TRUNCATION -> IMAGE), as an ensemble:

    bamsgan_latents   (python)            SEED, TRUNCATION[, SEED_B, MIX] -> LATENT   model.py + latents.py + metadata.json
    bamsgan_generator (onnxruntime_onnx)  latent -> image              model.onnx (+ model.plan when exported)
    bamsgan           (ensemble)          wires them; an empty version directory

The configs are tracked templates in serving/ensemble_repository/; this fills in version N (the
published version's number) of each model. --to elsewhere writes a complete standalone
repository (configs included) that can be mounted alone into the container:

    docker run --gpus all -v $PWD/ensemble:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        tritonserver --model-repository /models
(the container's Python needs numpy < 2 for the latents step).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "ensemble_repository"
MODELS = ("bamsgan", "bamsgan_latents", "bamsgan_generator")


class EnsembleError(RuntimeError):
    """A one-line problem with the inputs (missing version files, bad engine choice)."""


def tensorrt_config(onnx_config_text: str) -> str:
    """The generator's config for TensorRT: the ONNX one with platform tensorrt_plan."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(onnx_config_text, model_config_pb2.ModelConfig())
    config.platform = "tensorrt_plan"
    config.backend = ""
    header = "# Written by python -m serving.ensemble --engine tensorrt (model.plan; the plan's\n# optimisation profile must allow batch sizes up to max_batch_size).\n"
    return header + text_format.MessageToString(config)


def build_ensemble(version_dir: str | Path, to: str | Path = TEMPLATES, engine: str = "onnx") -> dict[str, Path]:
    """Populate the ensemble repository `to` from a published version; returns {model: version dir}."""
    version_dir, to = Path(version_dir).resolve(), Path(to).resolve()
    if not version_dir.name.isdigit():
        raise EnsembleError(f"--from must be a version directory like model_repository/bamsgan/3, got {version_dir}")
    needed = ["model.py", "latents.py", "generator.onnx"]
    missing = [name for name in needed if not (version_dir / name).is_file()]
    if missing:
        raise EnsembleError(f"{version_dir} lacks {', '.join(missing)}: publish a version with `make export` first")
    if engine not in ("onnx", "tensorrt"):
        raise EnsembleError(f"unknown engine {engine!r}: choose onnx or tensorrt")
    plan = version_dir / "generator.plan"
    if engine == "tensorrt" and not plan.is_file():
        raise EnsembleError(f"--engine tensorrt needs {plan} (export with TensorRT on the target GPU)")
    in_place = to == TEMPLATES
    if engine == "tensorrt" and in_place:
        raise EnsembleError("--engine tensorrt writes its own generator config: give --to a folder outside serving/ensemble_repository")

    version = version_dir.name
    written = {}
    for model in MODELS:
        model_dir = to / model
        model_dir.mkdir(parents=True, exist_ok=True)
        if not in_place:
            config = (TEMPLATES / model / "config.pbtxt").read_text()
            if model == "bamsgan_generator" and engine == "tensorrt":
                config = tensorrt_config(config)
            (model_dir / "config.pbtxt").write_text(config)
        target = model_dir / version
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        written[model] = target

    latents_dir = written["bamsgan_latents"]
    for name in ("model.py", "latents.py", "metadata.json"):
        if (version_dir / name).is_file():
            shutil.copy2(version_dir / name, latents_dir / name)
    if (version_dir / "__pycache__").is_dir():  # compiled by export (copy2 keeps the mtimes they check):
        shutil.copytree(version_dir / "__pycache__", latents_dir / "__pycache__")  # a load writes nothing for the poll to see
    generator_dir = written["bamsgan_generator"]
    shutil.copy2(version_dir / "generator.onnx", generator_dir / "model.onnx")
    if plan.is_file():
        shutil.copy2(plan, generator_dir / "model.plan")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="published version, e.g. model_repository/bamsgan/3")
    parser.add_argument("--to", default=str(TEMPLATES), help="ensemble repository to fill (default: %(default)s)")
    parser.add_argument("--engine", choices=("onnx", "tensorrt"), default="onnx", help="generator backend (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = build_ensemble(args.source, args.to, args.engine)
    except EnsembleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for model, path in written.items():
        print(f"{model:18s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
