"""Data-parallel training over the processes torchrun starts: NCCL on GPUs, gloo on CPU.

    torchrun --standalone --nproc_per_node N -m training.train ...            # one machine (make train NPROC=N)
    torchrun --nnodes M --node-rank I --nproc_per_node N --rdzv-backend c10d \\
             --rdzv-endpoint HOST:PORT -m training.train ...                  # M machines
    python -m training.distributed TORCHRUN-ARGS -m training.train ...        # the same, launcher failures in one line

A run does not depend on its number of processes, so a checkpoint from N processes resumes in M:
- `--batch-size` is the global batch B. Rank r of N trains on rows [r*B/N, (r+1)*B/N) of every
  step's slice of the epoch's permutation; the learning rates are those of one process with batch B.
- Random draws (latents, which blurred images, which memories to replay) are made for the whole
  global batch from the run's one stream seeded by --seed, identically on every rank, and each rank
  keeps its own rows: ranks never duplicate a sample, and N processes with batch B/N compute the step
  one process computes with batch B (up to the order of float sums). Drawing B x 128 numbers on
  every rank costs nothing next to a training step. A rank's random stream is thus its rows of the
  run's stream, derived from --seed; generators seeded per rank (seed + rank) would tie the run,
  and its checkpoints, to the number of processes.
- G and D are wrapped in DistributedDataParallel with broadcast_buffers=False (torch 2.13 spells it
  forward_sync_buffers=False; the buffers are still made equal once, at wrapping): every buffer is
  already identical on every rank. Spectral norm's u, v are updated by power iteration on the
  weights alone, and the weights are identical (all-reduced gradients, deterministic Adam); G's
  BatchNorm running statistics come from the global batch (below). Broadcasting rank 0's buffers
  before each forward would be one more collective per call for nothing.
- D is called twice per step. The D step goes through D's DDP wrapper (its gradients are averaged);
  the G step calls the bare D with its parameters frozen: that forward must not reach D's reducer,
  which would wait for D gradients that never come. G's gradients flow through the bare D into G's
  DDP-wrapped forward and are averaged there. Both calls update D's u, v, as in one process.
- G's BatchNorm normalises over the global batch (GlobalBatchNorm2d: summed statistics, all-reduced,
  differentiable). Per-rank statistics would make training depend on the world size (batch 8 per
  GPU on 8 GPUs is not batch 64) and leave the running statistics, which G-EMA copies, different on
  every rank. torch's SyncBatchNorm does the same but refuses CPU tensors, so one implementation
  serves gloo (tested in CI) and NCCL.
- G-EMA is updated from the identical G on every rank, so it is identical; every epoch the ranks
  compare a digest of it and stop with an error if they ever differ.
- One memory repository, identical on every rank: each step the global batch's first
  memory_store_per_step fakes are all-gathered and stored everywhere.
- Rank 0 alone prints, shows progress and writes samples, stats, metrics and checkpoints (each
  atomically); data are decoded by rank 0 first, the other ranks then read rank 0's cache. Every
  rank reads the checkpoint it resumes from: across machines, the run directory must be on a
  filesystem every node sees (the data cache need not be: a node without it decodes the data itself).
- The checkpoint holds no per-rank state, so --resume continues a run under any process count that
  divides its global batch (1 included); any other count is a one-line error before anything is
  touched.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass

# `python -m training.distributed` (the launcher): c10d's C++ log prints every failed connection
# attempt with a stack dump, which would bury the launcher's one-line error. torch reads the level
# once, when it loads; the training processes get the environment back (below) and log as usual.
_QUIET_CPP_LOG = __name__ == "__main__" and "TORCH_CPP_LOG_LEVEL" not in os.environ
if _QUIET_CPP_LOG:
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"

import torch  # noqa: E402  (after the log level above)
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

if _QUIET_CPP_LOG:
    del os.environ["TORCH_CPP_LOG_LEVEL"]

TIMEOUT_S = 1800  # collectives: other ranks wait this long while rank 0 evaluates metrics or writes checkpoints


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_environment() -> World:
    """The layout torchrun publishes in RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return World()
    return World(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def check_batch_split(batch_size: int, world: World, resumed: bool = False) -> int:
    """The per-rank batch; a one-line error when the global batch does not split evenly."""
    if batch_size % world.size:
        divisors = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        what = f"the run's global batch {batch_size} (saved in its checkpoint)" if resumed else f"--batch-size {batch_size} (the global batch)"
        raise SystemExit(f"error: {what} does not split over {world.size} processes; use a process count "
                         f"that divides it ({', '.join(map(str, divisors[:8]))}{', ...' if len(divisors) > 8 else ''})")
    return batch_size // world.size


def init_process_group(world: World, device_type: str) -> None:
    """Join the other ranks: NCCL between GPUs, gloo between CPU processes."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    except (RuntimeError, ValueError, TimeoutError) as error:  # DistNetworkError, DistStoreError are RuntimeErrors
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise SystemExit(f"error: rank {world.rank} of {world.size} could not join the others at {where} "
                         f"({str(error).splitlines()[0]})") from None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (decoding data, filling caches); then the others, from its cache."""
    if world.distributed and not world.main:
        dist.barrier()
    yield
    if world.distributed and world.main:
        dist.barrier()


def leave_quietly(world: World, code: int = 1):
    """End a non-zero rank after an error every rank hit: rank 0 prints it once and exits, torchrun
    then stops this process; waiting for that (a few seconds at most) keeps this rank from exiting
    first and getting rank 0 stopped before it has printed."""
    if world.distributed and not world.main:
        time.sleep(10)
    raise SystemExit(code)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(world: World, value):
    """Rank 0's `value` on every rank (e.g. a run directory named after rank 0's clock)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rows(world: World, per_rank: int) -> slice:
    """This rank's rows of a global batch."""
    return slice(world.rank * per_rank, (world.rank + 1) * per_rank)


def all_mean(world: World, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Averages over the ranks of scalar tensors (one collective for all of them)."""
    if not world.distributed or not values:
        return values
    stacked = torch.stack([torch.as_tensor(value, dtype=torch.float32) for value in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked / world.size))


def gather_rows(world: World, images: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` rows of the global batch whose rank-local part is `images` (equal parts)."""
    if not world.distributed:
        return images[:count]
    local = images[: min(count, len(images))].contiguous()
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return torch.cat(parts)[:count]


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensor bytes: equal digests, bit-identical weights."""
    hasher = hashlib.sha256()
    for name, tensor in state.items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def check_identical(world: World, module: nn.Module, what: str) -> str:
    """The module's digest; an error if any rank's copy differs from rank 0's."""
    mine = digest(module.state_dict())
    if world.distributed:
        digests = [None] * world.size
        dist.all_gather_object(digests, mine)
        differing = [rank for rank, theirs in enumerate(digests) if theirs != digests[0]]
        if differing:
            raise RuntimeError(f"{what} differs between ranks {differing} and rank 0: the replicas have diverged")
    return mine


# ----------------------------------------------------------------------------------------------
# BatchNorm over the global batch.


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the gradients (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (every rank's rows).

    Same parameters, buffers and state-dict keys as nn.BatchNorm2d; in one process, or in eval
    mode, it is nn.BatchNorm2d. Ranks must hold equal batches (training/train.py makes them).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels, count = x.shape[1], x.numel() // x.shape[1] * dist.get_world_size()
        xf = x.float()  # statistics in fp32 under autocast too
        sums = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))]))
        mean, mean_square = (sums / count).split(channels)
        variance = (mean_square - mean * mean).clamp_min(0)  # biased: what the batch is normalised with
        with torch.no_grad():  # running statistics as nn.BatchNorm2d keeps them (unbiased variance)
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(variance * count / (count - 1), self.momentum)
        scale = self.weight * torch.rsqrt(variance + self.eps)
        shift = self.bias - mean * scale
        return (xf * scale[:, None, None] + shift[:, None, None]).to(x.dtype)


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every nn.BatchNorm2d in `module` into a GlobalBatchNorm2d sharing its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            replacement.weight, replacement.bias = child.weight, child.bias
            replacement.running_mean, replacement.running_var = child.running_mean, child.running_var
            replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            use_global_batchnorm(child)
    return module


def data_parallel(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """`module` in DDP, buffers not re-broadcast before each forward (forward_sync_buffers=False, torch
    2.13's name for broadcast_buffers=False; see the module docstring), or itself in one process."""
    if not world.distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


# ----------------------------------------------------------------------------------------------
# `python -m training.distributed`: torchrun, with its failures in one line.


def launch(argv: list[str] | None = None) -> None:
    """torchrun with these arguments, its own failures in one line: a rendezvous that cannot be
    reached ends in one error line and exit 1 (after torchrun's rendezvous timeout: --rdzv-conf
    timeout=S for the default static rendezvous, join_timeout=S for c10d); a training process that
    fails has printed its own line, and the launcher exits with its code instead of adding
    torchrun's report of the failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # their reports of a failure; ours is one line
    try:
        run(args)
    except ChildFailedError as error:
        codes = [failure.exitcode for failure in error.failures.values() if failure.exitcode > 0]
        if codes:  # a process exited with an error it printed (rank 0's one line); torchrun stopped the rest
            raise SystemExit(codes[0]) from None
        killed = ", ".join(f"rank {rank}: {failure.signal_name()}" for rank, failure in error.failures.items() if failure.exitcode < 0)
        raise SystemExit(f"error: training process killed ({killed})") from None
    except Exception as error:  # the rendezvous: DistNetworkError, DistStoreError, RendezvousTimeoutError, ...
        endpoint = args.rdzv_endpoint or f"{args.master_addr}:{args.master_port}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"error: no rendezvous with the other nodes at {endpoint} ({reason})") from None


if __name__ == "__main__":
    launch()
