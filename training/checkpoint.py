"""Checkpoints: one dict of state_dicts plus step, config and RNG state (nanoGPT style).

Written atomically (temp file + fsync + rename: a crash never leaves half a checkpoint under the
real name) and loadable with `torch.load(weights_only=True)`: only tensors, numbers, strings and
containers go in. A missing, truncated or foreign file raises `CheckpointError` with a message
a user can act on.

A released generator (export/release.py: G-EMA weights only) is the same format without G, D,
optimisers, memory and RNG: everything that reads faces from a checkpoint loads it, and
`require_training_state` refuses to resume training from it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from training.networks.sagan import G_ATTENTION, Generator

FORMAT = "bamsgan-checkpoint"
FORMAT_VERSION = 1
LATEST = "checkpoint-latest.pt"  # a run's newest checkpoint: a hard link to it, swapped in atomically
# Every checkpoint has these. A training checkpoint also has TRAINING_KEYS; a released generator
# (export/release.py) has only these, plus RELEASE_KEY saying where it came from.
REQUIRED_KEYS = ("model", "config", "G_ema", "epoch", "step")
TRAINING_KEYS = ("G", "D", "opt_G", "opt_D", "rng")
RELEASE_KEY = "release"


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
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return state


def is_release(state: dict) -> bool:
    """A released generator: G-EMA weights only (export/release.py), nothing to resume training from."""
    return RELEASE_KEY in state


def require_training_state(state: dict, path: str | os.PathLike) -> dict:
    """The checkpoint, if training can resume from it; CheckpointError in one line otherwise."""
    if is_release(state):
        raise CheckpointError(
            f"{path} is a released generator (G-EMA weights only); it cannot be resumed — "
            "train from scratch or resume the run it came from"
        )
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}, so training cannot resume from it")
    return state


def generator_from_checkpoint(state: dict, ema: bool = True) -> Generator:
    """The checkpoint's generator (its EMA weights by default), in eval mode, on CPU."""
    model = state["model"]
    generator = Generator(z_dim=model["z_dim"], channels=model["channels"], attention=model["attention"],
                          g_attention=tuple(model.get("g_attention", G_ATTENTION)))  # checkpoints before the field: the paper's
    if not ema and "G" not in state:
        raise CheckpointError("this checkpoint holds only the EMA generator (G_ema), not the trained G")
    weights = state["G_ema" if ema else "G"]
    try:
        generator.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's generator weights do not fit its architecture {model}: {error}") from None
    return generator.eval()
