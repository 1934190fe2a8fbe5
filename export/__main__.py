"""CLI: python -m export [--run RUN_DIR | --ckpt FILE] [--repository DIR] [--model-name NAME]
[--fp16/--no-fp16] [--trt] [--work-dir DIR]

Exports the EMA generator of a checkpoint (default: the newest run under runs/) as a new version of
the served model. Exit codes: 0 published, 1 parity failure (nothing published), 2 bad input or a
missing requirement (one-line message, nothing written).
"""

from __future__ import annotations

import argparse
import sys

from export import parity
from export.pipeline import export_checkpoint, find_checkpoint
from export.repository import RepositoryError
from export.tensorrt_build import TensorRTUnavailable, require_tensorrt
from training.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description="Export the generator to the Triton model repository.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="training run directory (uses its checkpoint-latest.pt); default: the newest under runs/")
    source.add_argument("--ckpt", help="checkpoint file")
    parser.add_argument("--repository", default="model_repository", help="Triton model repository (default %(default)s)")
    parser.add_argument("--model-name", default="bamsgan", help="model directory inside the repository (default %(default)s)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="also publish generator_fp16.onnx if its parity holds")
    parser.add_argument("--trt", action="store_true", help="also build generator.plan with TensorRT (CUDA GPU + tensorrt package)")
    parser.add_argument("--work-dir", help="keep intermediate files here (default: a temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.trt:  # before anything else: a missing GPU/TensorRT is the one thing to say
            require_tensorrt()
        checkpoint = find_checkpoint(run=args.run, ckpt=args.ckpt)
        result = export_checkpoint(
            checkpoint,
            repository_dir=args.repository,
            model_name=args.model_name,
            fp16=args.fp16,
            trt=args.trt,
            work_dir=args.work_dir,
            log=lambda line: print(line, flush=True),
        )
    except parity.ParityError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    except (CheckpointError, RepositoryError, TensorRTUnavailable) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    print()
    print(parity.format_table({engine: result.metadata["parity"][engine] for engine in ("onnx", "onnx_fp16", "tensorrt")}))
    print(f"\npublished {result.version_dir} (engines: {', '.join(k for k, v in result.metadata['engines'].items() if v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
