"""TensorBoard event files for a run, beside stats.jsonl (which stays the record the tools read).
(Not named tensorboard.py: run from inside training/, that name would shadow the tensorboard package.)

Rank 0 writes into the run directory, once per epoch at the run's global step: every figure of the
epoch's stats.jsonl line (losses, D's mean logit per input part, images/s), every metric of its
metrics.jsonl line (FID when present) and the sample grid. `make tensorboard RUN=runs/NAME` shows
them. A resumed run opens its writer with purge_step = the first step after its checkpoint: TensorBoard
then drops whatever an earlier sitting wrote from that step on (a crash between the logs and the
checkpoint, or checkpoint_every > 1), so each step appears once, as in stats.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# stats.jsonl entries that locate a record or describe the machine, not curves.
NOT_PLOTTED = ("epoch", "step", "processes")


def tag_for(name: str) -> str:
    """A stats.jsonl key -> its TensorBoard tag: grouped into Loss/, D_logit/, Speed/ and Run/."""
    if name.startswith("loss_"):
        return "Loss/" + name.removeprefix("loss_")
    if name.startswith("D_"):
        return "D_logit/" + name.removeprefix("D_")
    if name in ("images_per_s", "seconds", "cpu_seconds", "peak_memory_mib"):
        return "Speed/" + name
    return "Run/" + name


class TrainingBoard:
    """One SummaryWriter on run_dir; `epoch(...)` writes one epoch's figures and grid."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        """resume_step: the step of the checkpoint a resumed run starts from (None: a fresh run)."""
        from torch.utils.tensorboard import SummaryWriter  # tensorboard loads only when a run writes events

        # Records at the checkpoint's own step (its epoch's) stay; later ones are redone, so purged.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=None if resume_step is None else resume_step + 1)

    def epoch(self, stats: dict, metrics: dict[str, dict] | None = None, grid: np.ndarray | None = None) -> None:
        """stats: the epoch's stats.jsonl record; metrics: training.metrics.face_quality results ({name: {"value": ...}});
        grid: the sample grid, uint8 [H, W, 3]."""
        step = int(stats["step"])
        for name, value in stats.items():
            if name not in NOT_PLOTTED and isinstance(value, (int, float)):
                self.writer.add_scalar(tag_for(name), value, step)
        for name, result in (metrics or {}).items():
            value = result.get("value") if isinstance(result, dict) else None
            if isinstance(value, (int, float, np.floating)) and np.isfinite(value):
                self.writer.add_scalar(f"Metrics/{name}", float(value), step)
        if grid is not None:
            self.writer.add_image("Samples/G_ema", grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
