"""Train BaMSGAN: `python -m training.train --data {synthetic|PATH} --epochs N --out RUN_DIR [--resume]`.

One step (all of it on the device, no host syncs except the progress bar every few steps):
  1. fakes = G(z)
  2. D step: one D call over [real | fakes | edge-blurred reals | memory replay], four-term loss
  3. G step: D(fakes) with D frozen, G loss
  4. store a few fakes in the memory repository (once filling has started), update EMA of G
With --augment (DiffAugment, training/augment.py) every image D sees, in both steps, is augmented.
Every epoch: sample grid from G-EMA at fixed seeds, one line in stats.jsonl (losses, and D's mean
logit on each input part, so the balance between D and G is visible), the same figures and the grid
as TensorBoard events (training/tensorboard_log.py), a checkpoint. With
--metrics-every K, every K-th epoch (and the last) G-EMA's faces at fixed seeds are scored against a
fixed real set (training/metrics/face_quality.py) and one line is appended to metrics.jsonl.
`--resume` restores G, D, G-EMA, optimisers, memory, RNG and position: on CPU a resumed run
reproduces the uninterrupted run's weights exactly.

Under torchrun (`torchrun --standalone --nproc_per_node N -m training.train ...`) the N processes
share each step's global batch (--batch-size); training/distributed.py explains how the run stays
independent of N, so a checkpoint resumes under any process count that divides the batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import re
import resource
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.augment import diff_augment, parse_policy
from training.blur import blur_subset
from training.checkpoint import LATEST, CheckpointError, load_checkpoint, require_training_state, save_checkpoint
from training.config import TrainConfig, config_from_dict, fork_config, parse_args
from training.constants import Z_DIM
from training.data.dataset import ImageSet, load_images
from training.distributed import (
    World, all_mean, barrier, broadcast_object, check_batch_split, check_identical, data_parallel, gather_rows,
    init_process_group, leave_quietly, main_first, rows, shutdown, use_global_batchnorm, world_from_environment,
)
from training.data.images import from_uint8_nchw, image_grid, save_png, to_uint8_nhwc
from training.latents import seeds_to_latents
from training.loss import discriminator_loss, generator_loss, gradient_penalty
from training.memory import MemoryRepository
from training.networks.attention import set_attention_impl
from training.networks.sagan import Discriminator, Generator
from training.networks.spectral_norm import spectral_norm_original_weights
from training.tensorboard_log import TrainingBoard
from training.hardware import cpu_has_native_bf16, free_cores, pick_device


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast for G's and D's layers (spectral norm's power iteration, the losses, Adam and the
    EMA stay fp32): on CUDA with --amp; on a CPU with --cpu-amp where it has native bf16 (AVX512-BF16
    or AMX), since elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return config.amp
    return config.amp and config.cpu_amp and cpu_has_native_bf16()


class Trainer:
    """Networks, optimisers, data and memory for one run; `step()` is one training step."""

    def __init__(self, config: TrainConfig, pixels: torch.Tensor, blurred: torch.Tensor | None, device: torch.device,
                 world: World = World()):
        self.config, self.device, self.world = config, device, world
        self.cuda = device.type == "cuda"
        self.bf16 = use_bf16(config, device)
        self.rows = rows(world, check_batch_split(config.batch_size, world))  # this rank's rows of each global batch
        if config.loss == "wgan-gp" and world.distributed:
            raise ValueError("--loss wgan-gp trains in one process: DDP cannot reduce the gradient penalty's double backward")
        torch.manual_seed(config.seed)
        model = config.model
        self.G = Generator(model["z_dim"], model["channels"], model["attention"], config.attention_impl, tuple(model["g_attention"])).to(device)
        self.D = Discriminator(model["channels"], model["attention"], config.attention_impl).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if world.distributed:
            use_global_batchnorm(self.G)  # G-EMA keeps plain BatchNorm: it is only ever evaluated
        if config.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        self.opt_G = torch.optim.Adam(self._decay_groups(self.G), lr=config.lr_g, betas=(config.beta1, config.beta2))
        self.opt_D = torch.optim.Adam(self._decay_groups(self.D), lr=config.lr_d, betas=(config.beta1, config.beta2))
        # The D step goes through D's DDP wrapper; the G step calls the bare D, frozen (see distributed.py).
        compile_ = torch.compile if config.compile else (lambda module: module)
        self.G_step = compile_(data_parallel(self.G, world, device))
        self.D_frozen = compile_(self.D)
        self.D_step = compile_(data_parallel(self.D, world, device)) if world.distributed else self.D_frozen

        # The whole dataset lives on the device as uint8 (41k faces = 0.5 GB); batches are gathered there.
        self.pixels = pixels.to(device)
        self.blurred = blurred.to(device) if blurred is not None and len(blurred) else None
        self.memory = MemoryRepository(config.memory_capacity, device, seed=config.seed + 1) if config.memory else None
        self.rng = torch.Generator(device=device).manual_seed(config.seed)
        self.augment_policy = parse_policy(config.augment)  # () = off: no draws, D sees the images as they are
        self.epoch = 0  # completed epochs
        self.step_count = 0
        self.train_seconds = 0.0  # wall time spent in training epochs, over resumes (the --minutes budget)

    def _decay_groups(self, net: torch.nn.Module) -> list[dict]:
        """Adam parameter groups: weight decay (the paper's regularisation) where it changes the function."""
        exempt = set() if self.config.decay_normalised else {id(p) for p in spectral_norm_original_weights(net)}
        groups = [{"params": [p for p in net.parameters() if id(p) not in exempt], "weight_decay": self.config.weight_decay},
                  {"params": [p for p in net.parameters() if id(p) in exempt], "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]  # decay everywhere: one group, as runs before the split

    # -- one training step -------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _images(self, pixels: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 pixels -> model images, mirrored where `flips` (bool [B]) is set."""
        if flips is not None:
            pixels = torch.where(flips[:, None, None, None], pixels.flip(3), pixels)
        images = from_uint8_nchw(pixels)
        return images.contiguous(memory_format=torch.channels_last) if self.config.channels_last else images

    def step(self, batch_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on the global batch `batch_index`; this rank computes its rows of it. Random draws
        are made for the whole global batch (the same on every rank) and sliced, so the step does not
        depend on the number of processes. Every step is a D step; every d_steps-th also a G step."""
        config, batch, mine = self.config, len(batch_index), self.rows
        g_step = (self.step_count + 1) % config.d_steps == 0
        z = torch.randn(batch, Z_DIM, device=self.device, generator=self.rng)[mine]
        flips = torch.rand(2, batch, device=self.device, generator=self.rng)[:, mine] < 0.5 if config.flip else [None, None]
        real = self._images(self.pixels[batch_index[mine]], flips[0])
        with self.autocast(), torch.set_grad_enabled(g_step):  # G's graph only when G learns from it
            fakes = self.G_step(z)
        losses = self._d_step(self._d_inputs(real, fakes, flips[1], batch), batch)
        if g_step:
            losses["loss_G"] = self._g_step(fakes, batch)
        if self.memory is not None and self.epoch >= config.memory_fill_epoch:
            self.memory.add(gather_rows(self.world, fakes.detach(), config.memory_store_per_step).float())
        if g_step:
            self._update_ema()
        self.step_count += 1
        return losses

    def _d_inputs(self, real: torch.Tensor, fakes: torch.Tensor, blur_flips, batch: int) -> dict[str, torch.Tensor]:
        """D's inputs by loss term: reals, G(z), edge-blurred reals, memory replay (those in play), augmented."""
        config, mine = self.config, self.rows
        parts = {"real": real, "fake": fakes.detach().to(real.dtype)}
        if self.blurred is not None:
            pick = torch.randint(0, len(self.blurred), (batch,), device=self.device, generator=self.rng)[mine]
            parts["blur"] = self._images(self.blurred[pick], blur_flips)
        if self.memory is not None and self.epoch >= config.memory_replay_epoch and len(self.memory):
            parts["memory"] = self.memory.sample(batch, rows=mine).to(real.dtype)
        return {name: self._augment(part, batch) for name, part in parts.items()}

    def _d_step(self, parts: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """One call of D over every input, split back into the loss terms; D's update. Returns the figures."""
        config = self.config
        with self.autocast():
            logits = self.D_step(torch.cat(list(parts.values()))).float()
        logits_by_part = dict(zip(parts, logits.split([len(part) for part in parts.values()])))
        loss_D, terms = discriminator_loss(logits_by_part, config.loss, config.blur_weight, config.memory_weight, config.fake_terms,
                                           config.label_smoothing)
        if config.loss == "wgan-gp":
            terms["gp"] = self._gradient_penalty(parts["real"], parts["fake"], batch)
            loss_D = loss_D + config.gp_weight * terms["gp"]
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        mean_logits = {f"D_{name}": part.detach().mean() for name, part in logits_by_part.items()}  # stays on the device
        return {"loss_D": loss_D.detach(), **{f"loss_D_{k}": v.detach() for k, v in terms.items()}, **mean_logits}

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, batch: int) -> torch.Tensor:
        """WGAN-GP's penalty in fp32 through the bare D with the reference attention (SDPA and the
        Triton kernel have no double backward); one process only (DDP cannot reduce it)."""
        mix = torch.rand(batch, device=self.device, generator=self.rng)[self.rows]
        set_attention_impl(self.D, "reference")
        try:
            return gradient_penalty(self.D, real.float(), fake.float(), mix)
        finally:
            set_attention_impl(self.D, self.config.attention_impl)

    def _g_step(self, fakes: torch.Tensor, batch: int) -> torch.Tensor:
        """G's update through the just-updated D, whose weights need no gradients here."""
        self.D.requires_grad_(False)
        with self.autocast():
            loss_G = generator_loss(self.D_frozen(self._augment(fakes, batch)).float(), self.config.loss)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        return loss_G.detach()

    def _augment(self, images: torch.Tensor, batch: int) -> torch.Tensor:
        """DiffAugment (config.augment) of this rank's rows of a global batch of `batch` D inputs."""
        return diff_augment(images, self.augment_policy, self.rng, batch, self.rows)

    def ema_decay(self) -> float:
        """This step's EMA decay: ramped up from 0 so early EMA weights are not dominated by the
        random initialisation; StyleGAN's half-life in images when config.ema_kimg is set."""
        config = self.config
        if config.ema_kimg is None:
            return min(config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        half_life = config.ema_kimg * 1000
        if config.ema_rampup is not None:  # at most ema_rampup x the images seen before this step
            half_life = min(half_life, self.step_count * config.batch_size * config.ema_rampup)
        return 0.5 ** (config.batch_size / half_life) if half_life > 0 else 0.0

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_params, params = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - self.ema_decay())
        if not self.config.ema_standing_stats:
            for ema_buffer, buffer in zip(self.G_ema.buffers(), self.G.buffers()):
                ema_buffer.copy_(buffer)  # BatchNorm statistics and spectral-norm vectors follow G

    def finish_epoch(self, seconds: float) -> None:
        """Count the epoch and its time; give G-EMA its own statistics before anything samples or saves it."""
        self.epoch += 1
        self.train_seconds += seconds
        if self.config.ema_standing_stats:
            standing_statistics(self.G_ema, seed=self.config.seed * 100_003 + self.epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Shuffled indices for an epoch: a function of (seed, epoch), so resuming needs no state."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.pixels), generator=generator).to(self.device)

    @torch.no_grad()
    def sample_grid(self, count: int) -> np.ndarray:
        latents = torch.from_numpy(seeds_to_latents(np.arange(count), Z_DIM)).to(self.device)
        images = to_uint8_nhwc(self.G_ema(latents)).cpu().numpy()
        return image_grid(images)

    # -- checkpoint state --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.config.model,
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch,
            "step": self.step_count,
            "train_seconds": self.train_seconds,
            "world_size": self.world.size,  # for the record: the state itself is the same for any world size
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "memory": self.memory.state_dict() if self.memory is not None else None,
            "rng": {"train": self.rng.get_state(), "torch_cpu": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            for name in ("G", "D", "G_ema"):
                getattr(self, name).load_state_dict(state[name])
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint networks do not match this run's architecture: {error}") from None
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        for optimiser, lr in ((self.opt_G, self.config.lr_g), (self.opt_D, self.config.lr_d)):  # a fork may change them
            for group in optimiser.param_groups:
                group.update(lr=lr, betas=(self.config.beta1, self.config.beta2),
                             weight_decay=self.config.weight_decay if group["weight_decay"] else 0.0)
        if self.memory is not None and state.get("memory") is not None:
            self.memory.load_state_dict(state["memory"])
        if state.get("rng") is not None:  # a fork with a new --seed draws afresh from it
            self.rng.set_state(state["rng"]["train"])
            torch.set_rng_state(state["rng"]["torch_cpu"])
        self.epoch, self.step_count = int(state["epoch"]), int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def finished(self) -> bool:
        """The run has done its epochs, or spent its --minutes."""
        budget = self.config.minutes
        return self.epoch >= self.config.epochs or (budget is not None and self.train_seconds >= 60 * budget)


STANDING_BATCHES, STANDING_BATCH_SIZE = 16, 64  # 1,024 latents: BatchNorm means to ~1/32 of a std


@torch.no_grad()
def standing_statistics(generator: torch.nn.Module, seed: int) -> None:
    """Replace an EMA generator's BatchNorm statistics and spectral-norm vectors by its own.

    G-EMA's weights are an average of G's, so G's running BatchNorm statistics and singular vectors
    describe another network. Train-mode forward passes over seeded latents recompute both for
    G-EMA's weights: each pass is one power iteration per spectral-norm layer (started from the
    vectors it has, so they keep converging from epoch to epoch), and with momentum None BatchNorm
    keeps the plain average over the passes (BigGAN's "standing statistics"). A function of the
    weights, the vectors and the seed, all in the checkpoint: an exact resume repeats it.
    """
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    rng = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    generator.train()
    for _ in range(STANDING_BATCHES):
        generator(torch.randn(STANDING_BATCH_SIZE, Z_DIM, generator=rng).to(device))
    generator.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def measure(config: TrainConfig, steps: int, windows: int = 3) -> dict:
    """Time `windows` x `steps` full training steps on random images after 3 warm-up steps: images/s
    (the global batch over the processes' wall time; under torchrun every rank runs this) per window,
    their mean, and peak memory (`--bench STEPS`; training/studies/bench_training.py compares with it)."""
    world = world_from_environment()
    device = pick_device(config.device, world.local_rank if world.distributed else None)
    init_process_group(world, device.type)
    torch.set_num_threads(config.threads or max(1, free_cores() // world.local_size))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (max(512, 4 * config.batch_size), 3, 64, 64), dtype=torch.uint8, generator=generator)
    trainer = Trainer(config, pixels, pixels[: len(pixels) // 10], device, world)
    if trainer.memory is not None:  # time the full four-term step: memory filled and replayed
        trainer.epoch = config.memory_replay_epoch
        trainer.memory.add(torch.rand(config.memory_capacity, 3, 64, 64, device=device) * 2 - 1)
    order = trainer.epoch_order(0)
    batches = [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(len(order) // config.batch_size)]
    for index in range(3):  # warm-up: allocator, autotuning, torch.compile
        trainer.step(batches[index % len(batches)])
    if trainer.cuda:
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for window in range(windows):
        if trainer.cuda:
            torch.cuda.synchronize()
        barrier(world)
        start = time.perf_counter()
        for index in range(steps):
            trainer.step(batches[(window * steps + index) % len(batches)])
        if trainer.cuda:
            torch.cuda.synchronize()
        barrier(world)  # the slowest rank ends the window
        rates.append(steps * config.batch_size / (time.perf_counter() - start))
    peak_mib = (torch.cuda.max_memory_allocated() if trainer.cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"images_per_s": sum(rates) / len(rates), "windows": rates, "processes": world.size,
            "threads": torch.get_num_threads(), "peak_mib": peak_mib,
            "memory_kind": "CUDA max allocated" if trainer.cuda else "process peak RSS (rank 0)"}


# -- run directory ---------------------------------------------------------------------------
def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    data = Path(config.data.rstrip("/"))
    name = "synthetic" if config.data == "synthetic" else data.parent.name if any(c in data.name for c in "*?[") else data.stem
    name = re.sub(r"[^\w.-]+", "", name) or "data"  # a glob is named after its folder: no '*' in a path
    return Path("runs") / f"{stamp}-{name}-{config.preset}"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Never overwrite a run: a fresh run needs a new directory, --resume needs an existing one."""
    if resume:
        if not (run_dir / LATEST).is_file():
            raise SystemExit(f"error: --resume given, but {run_dir / LATEST} does not exist")
    elif (run_dir / LATEST).exists() or (run_dir / "options.json").exists():
        raise SystemExit(f"error: {run_dir} already holds a run; pass --resume to continue it or choose another --out")


def write_lines(path: Path, lines: list[str]) -> None:
    """Replace a small text file atomically: readers see the old file or the new one, never half a line."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(line + "\n" for line in lines))
    os.replace(partial, path)


def _plain(value):
    """numpy scalars and arrays (in metric entries) as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def append_jsonl(path: Path, record: dict) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    write_lines(path, lines + [json.dumps(record, default=_plain)])


def trim_jsonl(path: Path, epoch: int) -> None:
    """Drop the records of epochs after `epoch`: a resumed run redoes them (a crash between the
    logs and the checkpoint, or checkpoint_every > 1), and each epoch must appear once."""
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        if kept != lines:
            write_lines(path, kept)


def write_checkpoint(trainer: Trainer, run_dir: Path, keep: int) -> Path:
    path = save_checkpoint(run_dir / "checkpoints" / f"epoch-{trainer.epoch:04d}.pt", trainer.state_dict())
    # checkpoint-latest.pt: a hard link to the newest epoch file, swapped in atomically.
    partial = run_dir / f".{LATEST}.partial"
    partial.unlink(missing_ok=True)
    try:
        os.link(path, partial)
    except OSError:
        partial.write_bytes(path.read_bytes())
    os.replace(partial, run_dir / LATEST)
    for old in sorted((run_dir / "checkpoints").glob("epoch-*.pt"))[:-keep]:
        old.unlink()
    return path


def load_data(config: TrainConfig, log=print) -> tuple[ImageSet, torch.Tensor | None]:
    images = load_images(
        config.data, cache_dir=config.cache_dir, max_images=config.max_images,
        synthetic_size=config.synthetic_size, seed=config.seed,
    )
    pixels = images.pixels
    log(f"data: {len(pixels)} images from {images.source}")
    if len(pixels) < config.batch_size:
        raise SystemExit(f"error: the data has {len(pixels)} images, fewer than --batch-size {config.batch_size}")
    blurred = None
    if config.blur:
        _, blurred = blur_subset(
            pixels, config.blur_fraction, config.seed, config.canny_low, config.canny_high, config.blur_kernel,
            cache_dir=config.cache_dir, cache_key=images.cache_key, progress=log is print,
        )
        log(f"edge-blurred negatives: {len(blurred)} images ({config.blur_fraction:.0%} of the data)")
    return images, blurred


class FaceMetrics:
    """G-EMA's face-quality metrics (training/metrics/face_quality.py) against one fixed real set.

    The real faces are loaded once per run: an evenly spaced subset of `metrics_count` of them, a
    function of the data alone, so the metrics module's cache of real-set statistics serves every
    evaluation and every run on the same data. The fakes are G-EMA's faces for seeds
    0..metrics_count-1, the same seeds every evaluation.
    """

    def __init__(self, config: TrainConfig, train_images: ImageSet):
        from training.metrics import face_quality as metrics  # scipy and the metric models only load when metrics are asked for

        self.metrics, self.config = metrics, config
        real = train_images if config.metrics_data is None else load_images(
            config.metrics_data, cache_dir=config.cache_dir, synthetic_size=config.synthetic_size, seed=config.seed)
        count = min(config.metrics_count, len(real))
        self.reals = real.pixels[torch.arange(count) * len(real) // count].permute(0, 2, 3, 1).numpy()
        self.real_key = real.cache_key
        self.detector = metrics.find_detector(config.detector)
        self.inception_weights = metrics.find_inception_weights(config.inception_weights)
        print(f"metrics every {config.metrics_every} epoch(s): {config.metrics_count} G-EMA faces against "
              f"{count} real faces from {real.source}")

    def __call__(self, generator: torch.nn.Module, device: torch.device) -> dict[str, dict]:
        fakes = self.metrics.faces_from_generator(generator, self.config.metrics_count, device=device)
        return self.metrics.compute_metrics(fakes, self.reals, detector=self.detector, inception_weights=self.inception_weights,
                                            real_key=self.real_key, seed=self.config.seed)

    def headline(self, results: dict[str, dict]) -> str:
        # FID when it has a value (metrics_count >= 100 and the Inception weights), else the headline metric.
        name = "fid" if results.get("fid", {}).get("value") is not None else self.metrics.HEADLINE_METRIC
        value = results.get(name, {}).get("value")
        return f"  {name} {value:.4g}" if value is not None else f"  {name} n/a"


def evaluate_now(config: TrainConfig, epoch: int, last: bool = False) -> bool:
    """Score G-EMA after this epoch: every metrics_every-th epoch, and the run's last (`last`: the
    time budget ended it early)."""
    return config.metrics_every > 0 and (epoch % config.metrics_every == 0 or epoch == config.epochs or last)


def run_info(config: TrainConfig, device: torch.device, world: World) -> dict:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processes": world.size,
        "bf16": use_bf16(config, device),
    }


def resumed_config(run_dir: Path, world: World, resume_epochs: int | None,
                   resume_minutes: float | None, log) -> tuple[TrainConfig, dict]:
    """The saved run's own config (to `resume_epochs` / `resume_minutes` when given) and its checkpoint."""
    # On CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest to the device.
    state = load_checkpoint(run_dir / LATEST, map_location="cpu")
    require_training_state(state, run_dir / LATEST)  # a released generator holds G-EMA only
    saved = config_from_dict(state["config"])
    check_batch_split(saved.batch_size, world, resumed=True)
    if resume_epochs is not None and resume_epochs != saved.epochs:
        log(f"resume: training to {resume_epochs} epochs (the run was started for {saved.epochs})")
    if resume_minutes is not None and resume_minutes != saved.minutes:
        log(f"resume: a time budget of {resume_minutes:g} minutes in all (the run was started with {saved.minutes})")
    if state.get("world_size", 1) != world.size:
        log(f"resume: {state.get('world_size', 1)} process(es) wrote the checkpoint, {world.size} continue it")
    config = dataclasses.replace(saved, epochs=resume_epochs or saved.epochs,
                                 minutes=saved.minutes if resume_minutes is None else resume_minutes)
    return config, state


def forked_config(fork: Path, args, world: World, log) -> tuple[TrainConfig, dict]:
    """A new run's config and starting state from another run's checkpoint (`--fork`): training/config.py's
    fork_config decides the config; a new --seed drops the saved random state, so what follows is drawn afresh."""
    state = load_checkpoint(fork, map_location="cpu")
    require_training_state(state, fork)
    saved = config_from_dict(state["config"])
    config, notes = fork_config(saved, args, int(state["epoch"]))
    check_batch_split(config.batch_size, world, resumed=True)
    if config.memory and state.get("memory") is None:
        notes.insert(0, f"fork: {fork} has no memory repository (its run had none); the memory starts empty")
    if config.seed != saved.seed:
        state = {**state, "rng": None}
    for note in notes:
        log(note)
    forked_from = {"checkpoint": str(fork), "epoch": int(state["epoch"]), "step": int(state["step"]),
                   "train_seconds": float(state.get("train_seconds", 0.0)), "notes": notes}
    return config, {**state, "train_seconds": 0.0, "forked_from": forked_from}  # the fork's clock starts at the fork


def starting_point(config: TrainConfig, run_dir: Path, resume: bool, resume_epochs: int | None, resume_minutes: float | None,
                   fork_args, world: World, log) -> tuple[TrainConfig, dict | None]:
    """(config, checkpoint state or None): a fresh run, a resumed one, or a fork of another run's checkpoint."""
    check_run_dir(run_dir, resume)
    if resume:
        return resumed_config(run_dir, world, resume_epochs, resume_minutes, log)
    if fork_args is not None and fork_args.fork:
        return forked_config(Path(fork_args.fork), fork_args, world, log)
    return config, None


def prepare_run_dir(run_dir: Path, config: TrainConfig, trainer: Trainer, resumed: bool, world: World,
                    forked_from: dict | None = None) -> None:
    """Rank 0: folders; a fresh run writes options.json (a fork: with where it came from) and the real
    faces' grid, a resumed one drops the log records of the epochs it is about to redo."""
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if resumed:
        for name in ("stats.jsonl", "metrics.jsonl"):
            trim_jsonl(run_dir / name, trainer.epoch)
        record_resume(run_dir, config, trainer, world)
    else:
        options = {**dataclasses.asdict(config), "run": {**run_info(config, trainer.device, world),
                                                         **({"forked_from": forked_from} if forked_from else {})}}
        write_lines(run_dir / "options.json", [json.dumps(options, indent=2)])
        reals = trainer.pixels[: config.sample_seeds].cpu().permute(0, 2, 3, 1).numpy()
        save_png(run_dir / "samples" / "reals.png", image_grid(reals))


def record_resume(run_dir: Path, config: TrainConfig, trainer: Trainer, world: World) -> None:
    """Append this sitting to options.json's run.resumes (command, epoch it starts from, epochs and
    minutes it trains to), so a run trained in several sittings still says how it was made."""
    path = run_dir / "options.json"
    if not path.is_file():  # a run from before options.json: nothing to add to
        return
    options = json.loads(path.read_text())
    sitting = {**run_info(config, trainer.device, world), "from_epoch": trainer.epoch, "epochs": config.epochs, "minutes": config.minutes}
    options.setdefault("run", {}).setdefault("resumes", []).append(sitting)
    write_lines(path, [json.dumps(options, indent=2)])


def train_epoch(trainer: Trainer, steps_per_epoch: int, world: World) -> tuple[dict[str, float], float]:
    """One epoch of steps: (each step output's mean over the epoch and the ranks, plus "cpu_seconds": the
    CPU time of all the processes, which a busy machine does not inflate as it does the wall seconds; wall seconds)."""
    config, batch = trainer.config, trainer.config.batch_size
    order = trainer.epoch_order(trainer.epoch)
    totals: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step
    counts: dict[str, int] = {}  # steps each entry was present in (memory joins mid-run)
    start, cpu_start = time.perf_counter(), time.process_time()
    with tqdm(total=steps_per_epoch * batch, desc=f"epoch {trainer.epoch + 1}/{config.epochs}", unit="img", unit_scale=True,
              dynamic_ncols=True, disable=None if world.main else True) as progress:
        for step in range(steps_per_epoch):
            losses = trainer.step(order[step * batch : (step + 1) * batch])
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
            progress.update(batch)
            if world.main and (step % 10 == 9 or step == steps_per_epoch - 1):  # a host sync, so only now and then
                progress.set_postfix({name: f"{losses[key].item():.3f}" for name, key in (("D", "loss_D"), ("G", "loss_G")) if key in losses})
    means = {name: total / counts[name] for name, total in totals.items()}
    means["seconds"] = torch.tensor(time.perf_counter() - start, device=trainer.device)
    means["cpu_seconds"] = torch.tensor((time.process_time() - cpu_start) * world.size, device=trainer.device)  # mean x N = sum
    means = all_mean(world, means)  # over the ranks: every rank sees the same time budget spent
    seconds = float(means.pop("seconds"))
    return {name: float(mean) for name, mean in means.items()}, seconds


def record_epoch(trainer: Trainer, run_dir: Path, means: dict[str, float], seconds: float, steps_per_epoch: int,
                 face_metrics: FaceMetrics | None, board: TrainingBoard | None, world: World) -> dict:
    """Rank 0, after an epoch: stats.jsonl (and metrics.jsonl when scored), TensorBoard, the sample
    grid and the checkpoint. Returns the stats record."""
    config, batch = trainer.config, trainer.config.batch_size
    stats = {"epoch": trainer.epoch, "step": trainer.step_count, "seconds": round(seconds, 2),
             "images_per_s": round(steps_per_epoch * batch / seconds, 1),
             **{name: round(mean, 5) for name, mean in means.items()},
             "memory_images": len(trainer.memory) if trainer.memory is not None else 0}
    if world.distributed:
        stats["processes"] = world.size
    if trainer.cuda:
        stats["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    append_jsonl(run_dir / "stats.jsonl", stats)
    results, headline = None, ""
    if face_metrics is not None and evaluate_now(config, trainer.epoch, last=trainer.finished()):
        started = time.perf_counter()
        results = face_metrics(trainer.G_ema, trainer.device)
        append_jsonl(run_dir / "metrics.jsonl", {
            "epoch": trainer.epoch, "step": trainer.step_count, "kimg": round(trainer.step_count * batch / 1000, 3),
            "n": config.metrics_count, "seconds": round(time.perf_counter() - started, 1), "metrics": results})
        headline = face_metrics.headline(results)
    grid = trainer.sample_grid(config.sample_seeds)
    save_png(run_dir / "samples" / f"epoch-{trainer.epoch:04d}.png", grid)
    save_png(run_dir / "samples" / "latest.png", grid)
    if board is not None:
        board.epoch(stats, results, grid)
    if trainer.epoch % config.checkpoint_every == 0 or trainer.finished():
        write_checkpoint(trainer, run_dir, config.keep_checkpoints)
    print(f"epoch {trainer.epoch}: D {stats['loss_D']:.3f}  G {stats['loss_G']:.3f}  {stats['images_per_s']} img/s{headline}")
    return stats


def train(config: TrainConfig, run_dir: Path, resume: bool = False, resume_epochs: int | None = None,
          world: World | None = None, resume_minutes: float | None = None, fork_args=None) -> Trainer:
    """Train a new run in run_dir, or with resume=True continue the run there with its saved
    options (to its own epoch count, or to `resume_epochs` when given), or with `fork_args.fork`
    start a new run from another run's checkpoint. Under torchrun every process calls this; rank 0
    alone writes into run_dir (which other nodes must see: every rank reads the checkpoint it starts from)."""
    world = world or world_from_environment()
    device = pick_device(config.device, world.local_rank if world.distributed else None)
    init_process_group(world, device.type)
    log = print if world.main else (lambda *args, **kwargs: None)
    config, state = starting_point(config, run_dir, resume, resume_epochs, resume_minutes, fork_args, world, log)
    check_batch_split(config.batch_size, world)
    # The run's own thread count (it changes float sums), shared by the processes on this machine.
    torch.set_num_threads(config.threads or max(1, free_cores() // world.local_size))
    with main_first(world):  # rank 0 decodes and caches; the others read its cache
        images, blurred = load_data(config, log)
    face_metrics = FaceMetrics(config, images) if config.metrics_every > 0 and world.main else None
    trainer = Trainer(config, images.pixels, blurred, device, world)
    if state is not None:
        trainer.load_state_dict(state)
        log(f"{'resumed' if resume else 'forked'} {run_dir if resume else state['forked_from']['checkpoint']} at epoch {trainer.epoch} "
            f"(step {trainer.step_count})")
    board = None
    if world.main:
        prepare_run_dir(run_dir, config, trainer, resume, world, forked_from=None if resume or state is None else state["forked_from"])
        board = TrainingBoard(run_dir, resume_step=trainer.step_count if resume else None) if config.tensorboard else None

    batch = config.batch_size
    steps_per_epoch = len(images.pixels) // batch
    processes = f", {world.size} processes x {batch // world.size} images" if world.distributed else ""
    precision = "bf16 autocast" if trainer.bf16 else "fp32"
    log(f"training on {device} ({torch.get_num_threads()} threads{processes}, {precision}): {steps_per_epoch} steps/epoch of {batch}, "
        f"epochs {trainer.epoch + 1}..{config.epochs}, run dir {run_dir}")
    if device.type == "cpu" and config.amp and config.cpu_amp and not trainer.bf16:
        log("--cpu-amp: this CPU has no native bf16 (avx512_bf16 / amx_bf16 in /proc/cpuinfo), so the run stays in fp32")
    if config.minutes is not None:
        log(f"time budget: {config.minutes:g} minutes of training ({trainer.train_seconds / 60:.1f} spent), at most {config.epochs} epochs")
    try:
        while not trainer.finished():
            means, seconds = train_epoch(trainer, steps_per_epoch, world)
            trainer.finish_epoch(seconds)
            if world.distributed:
                check_identical(world, trainer.G_ema, "G-EMA")  # cheap insurance: the replicas never drift apart
            if world.main:
                record_epoch(trainer, run_dir, means, seconds, steps_per_epoch, face_metrics, board, world)
    finally:
        if board is not None:
            board.close()
    if world.distributed:  # every rank names its G-EMA: equal digests, bit-identical weights
        print(f"rank {world.rank} of {world.size}: G-EMA sha256 {check_identical(world, trainer.G_ema, 'G-EMA')}", flush=True)
    barrier(world)  # nobody leaves (and tears the group down) while rank 0 still writes
    log(f"done: {run_dir / LATEST}, samples in {run_dir / 'samples'}")
    return trainer


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    if args.bench:
        try:
            result = measure(config, args.bench)
        finally:
            shutdown()
        if world_from_environment().main:
            print(json.dumps({"attention_impl": config.attention_impl, "batch_size": config.batch_size, **result}))
        return
    world = world_from_environment()
    init_process_group(world, pick_device(config.device, world.local_rank if world.distributed else None).type)  # its errors name the rank: every rank prints
    run_dir = Path(args.out) if args.out else Path(broadcast_object(world, str(default_run_dir(config))))  # rank 0's clock
    try:
        train(config, run_dir, resume=args.resume, resume_epochs=args.epochs, world=world, resume_minutes=args.minutes, fork_args=args)
    except (CheckpointError, FileNotFoundError, ValueError) as error:  # bad data or options: one line
        if not world.main:
            leave_quietly(world)  # the same line, printed once by rank 0
        raise SystemExit(f"error: {error}") from None
    except SystemExit as exit:
        if world.main or not isinstance(exit.code, str):
            raise
        leave_quietly(world)
    except KeyboardInterrupt:
        raise SystemExit(f"\ninterrupted: continue with `python -m training.train --out {run_dir} --resume`") from None
    finally:
        shutdown()


if __name__ == "__main__":
    main()
