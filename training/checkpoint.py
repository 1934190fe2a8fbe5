"""Checkpoints: one dict of state_dicts plus step, config and RNG state (nanoGPT style).

Written atomically (temp file + fsync + rename: a crash never leaves half a checkpoint under the
real name) and loadable with `torch.load(weights_only=True)`: only tensors, numbers, strings and
containers go in. A missing, truncated or foreign file raises `CheckpointError` with a message
a user can act on.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from training.networks import Generator

FORMAT = "bamsgan-checkpoint"
FORMAT_VERSION = 1
LATEST = "checkpoint-latest.pt"  # a run's newest checkpoint: a hard link to it, swapped in atomically


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason in words."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as file:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as error:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size} bytes) is truncated or not a PyTorch checkpoint: {str(error).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a BaMSGAN checkpoint (it has no format={FORMAT!r} entry)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')}; this code reads version {FORMAT_VERSION}"
        )
    missing = [key for key in ("model", "config", "G", "G_ema", "epoch", "step") if key not in state]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return state


def generator_from_checkpoint(state: dict, ema: bool = True) -> Generator:
    """The checkpoint's generator (its EMA weights by default), in eval mode, on CPU."""
    model = state["model"]
    generator = Generator(z_dim=model["z_dim"], channels=model["channels"], attention=model["attention"])
    weights = state["G_ema" if ema else "G"]
    try:
        generator.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's generator weights do not fit its architecture {model}: {error}") from None
    return generator.eval()
