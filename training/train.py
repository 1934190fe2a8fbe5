"""Train BaMSGAN: `python -m training.train --data {synthetic|PATH} --epochs N --out RUN_DIR [--resume]`.

One step (all of it on the device, no host syncs except the progress bar every few steps):
  1. fakes = G(z)
  2. D step: one D call over [real | fakes | edge-blurred reals | memory replay], four-term loss
  3. G step: D(fakes) with D frozen, G loss
  4. store a few fakes in the memory repository (once filling has started), update EMA of G
Every epoch: sample grid from G-EMA at fixed seeds, one line in stats.jsonl, a checkpoint.
`--resume` restores G, D, G-EMA, optimisers, memory, RNG and position: on CPU a resumed run
reproduces the uninterrupted run's weights exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import re
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.blur import blur_subset
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import TrainConfig, config_from_dict, parse_args
from training.constants import Z_DIM
from training.dataset import load_images
from training.images import from_uint8_nchw, image_grid, save_png, to_uint8_nhwc
from training.latents import seeds_to_latents
from training.loss import discriminator_loss, generator_loss
from training.memory import MemoryRepository
from training.networks import Discriminator, Generator

LATEST = "checkpoint-latest.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    return torch.device(name)


def free_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Trainer:
    """Networks, optimisers, data and memory for one run; `step()` is one training step."""

    def __init__(self, config: TrainConfig, pixels: torch.Tensor, blurred: torch.Tensor | None, device: torch.device):
        self.config, self.device = config, device
        self.cuda = device.type == "cuda"
        torch.manual_seed(config.seed)
        model = config.model
        self.G = Generator(model["z_dim"], model["channels"], model["attention"], config.attention_impl).to(device)
        self.D = Discriminator(model["channels"], model["attention"], config.attention_impl).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if self.cuda and config.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        adam = dict(betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, **adam)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, **adam)
        self.G_step = torch.compile(self.G) if config.compile else self.G
        self.D_step = torch.compile(self.D) if config.compile else self.D

        # The whole dataset lives on the device as uint8 (41k faces = 0.5 GB); batches are gathered there.
        self.pixels = pixels.to(device)
        self.blurred = blurred.to(device) if blurred is not None and len(blurred) else None
        self.memory = MemoryRepository(config.memory_capacity, device, seed=config.seed + 1) if config.memory else None
        self.rng = torch.Generator(device=device).manual_seed(config.seed)
        self.epoch = 0  # completed epochs
        self.step_count = 0

    # -- one training step -------------------------------------------------------------------
    def autocast(self):
        enabled = self.cuda and self.config.amp
        return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else nullcontext()

    def _images(self, pixels: torch.Tensor) -> torch.Tensor:
        images = from_uint8_nchw(pixels)
        return images.contiguous(memory_format=torch.channels_last) if self.cuda and self.config.channels_last else images

    def step(self, batch_index: torch.Tensor) -> dict[str, torch.Tensor]:
        config, batch = self.config, len(batch_index)
        real = self._images(self.pixels[batch_index])
        z = torch.randn(batch, Z_DIM, device=self.device, generator=self.rng)
        with self.autocast():
            fakes = self.G_step(z)

        # D step: one call over every input, split back into the loss terms.
        parts = {"real": real, "fake": fakes.detach().to(real.dtype)}
        if self.blurred is not None:
            pick = torch.randint(0, len(self.blurred), (batch,), device=self.device, generator=self.rng)
            parts["blur"] = self._images(self.blurred[pick])
        if self.memory is not None and self.epoch >= config.memory_replay_epoch and len(self.memory):
            parts["memory"] = self.memory.sample(batch).to(real.dtype)
        with self.autocast():
            logits = self.D_step(torch.cat(list(parts.values()))).float()
        logits_by_part = dict(zip(parts, logits.split([len(part) for part in parts.values()])))
        loss_D, terms = discriminator_loss(logits_by_part, config.loss, config.blur_weight, config.memory_weight)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()

        # G step through the updated D; D's weights need no gradients here.
        self.D.requires_grad_(False)
        with self.autocast():
            loss_G = generator_loss(self.D_step(fakes).float(), config.loss)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)

        if self.memory is not None and self.epoch >= config.memory_fill_epoch:
            self.memory.add(fakes[: config.memory_store_per_step].float())
        self._update_ema()
        self.step_count += 1
        return {"loss_D": loss_D.detach(), "loss_G": loss_G.detach(), **{f"loss_D_{k}": v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Ramp the decay up so early EMA weights are not dominated by the random initialisation.
        decay = min(self.config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        ema_params, params = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.G_ema.buffers(), self.G.buffers()):
            ema_buffer.copy_(buffer)  # BatchNorm statistics and spectral-norm vectors follow G

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
        if self.memory is not None and state.get("memory") is not None:
            self.memory.load_state_dict(state["memory"])
        self.rng.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        self.epoch, self.step_count = int(state["epoch"]), int(state["step"])


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


def load_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = load_images(
        config.data, cache_dir=config.cache_dir, max_images=config.max_images,
        synthetic_size=config.synthetic_size, seed=config.seed,
    )
    pixels = images.pixels
    print(f"data: {len(pixels)} images from {images.source}")
    if len(pixels) < config.batch_size:
        raise SystemExit(f"error: the data has {len(pixels)} images, fewer than --batch-size {config.batch_size}")
    blurred = None
    if config.blur:
        _, blurred = blur_subset(
            pixels, config.blur_fraction, config.seed, config.canny_low, config.canny_high, config.blur_kernel,
            cache_dir=config.cache_dir, cache_key=images.cache_key,
        )
        print(f"edge-blurred negatives: {len(blurred)} images ({config.blur_fraction:.0%} of the data)")
    return pixels, blurred


def run_info(config: TrainConfig, device: torch.device) -> dict:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def train(config: TrainConfig, run_dir: Path, resume: bool = False, resume_epochs: int | None = None) -> Trainer:
    """Train a new run in run_dir, or with resume=True continue the run there with its saved
    options (to its own epoch count, or to `resume_epochs` when given)."""
    device = pick_device(config.device)
    torch.set_num_threads(config.threads or free_cores())
    check_run_dir(run_dir, resume)
    state = None
    if resume:
        # On CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest to the device.
        state = load_checkpoint(run_dir / LATEST, map_location="cpu")
        saved = config_from_dict(state["config"])
        if resume_epochs is not None and resume_epochs != saved.epochs:
            print(f"resume: training to {resume_epochs} epochs (the run was started for {saved.epochs})")
        config = dataclasses.replace(saved, epochs=resume_epochs or saved.epochs)
    pixels, blurred = load_data(config)
    trainer = Trainer(config, pixels, blurred, device)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if state is not None:
        trainer.load_state_dict(state)
        print(f"resumed {run_dir} at epoch {trainer.epoch} (step {trainer.step_count})")
    else:
        options = {**dataclasses.asdict(config), "run": run_info(config, device)}
        (run_dir / "options.json").write_text(json.dumps(options, indent=2) + "\n")
        save_png(run_dir / "samples" / "reals.png", image_grid(pixels[: config.sample_seeds].permute(0, 2, 3, 1).numpy()))

    batch = config.batch_size
    steps_per_epoch = len(pixels) // batch
    print(f"training on {device} ({torch.get_num_threads()} threads): {steps_per_epoch} steps/epoch, "
          f"epochs {trainer.epoch + 1}..{config.epochs}, run dir {run_dir}")
    while trainer.epoch < config.epochs:
        epoch, order = trainer.epoch, trainer.epoch_order(trainer.epoch)
        totals: dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        with tqdm(total=steps_per_epoch * batch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="img", unit_scale=True,
                  dynamic_ncols=True, disable=None) as progress:
            for step in range(steps_per_epoch):
                losses = trainer.step(order[step * batch : (step + 1) * batch])
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value
                progress.update(batch)
                if step % 10 == 9 or step == steps_per_epoch - 1:  # a host sync, so only now and then
                    progress.set_postfix(D=f"{losses['loss_D'].item():.3f}", G=f"{losses['loss_G'].item():.3f}")
        seconds = time.perf_counter() - start
        trainer.epoch += 1

        stats = {"epoch": trainer.epoch, "step": trainer.step_count, "seconds": round(seconds, 2),
                 "images_per_s": round(steps_per_epoch * batch / seconds, 1),
                 **{name: round(float(total) / steps_per_epoch, 5) for name, total in totals.items()},
                 "memory_images": len(trainer.memory) if trainer.memory is not None else 0}
        if trainer.cuda:
            stats["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        with open(run_dir / "stats.jsonl", "a") as file:
            file.write(json.dumps(stats) + "\n")
        grid = trainer.sample_grid(config.sample_seeds)
        save_png(run_dir / "samples" / f"epoch-{trainer.epoch:04d}.png", grid)
        save_png(run_dir / "samples" / "latest.png", grid)
        if trainer.epoch % config.checkpoint_every == 0 or trainer.epoch == config.epochs:
            write_checkpoint(trainer, run_dir, config.keep_checkpoints)
        print(f"epoch {trainer.epoch}: D {stats['loss_D']:.3f}  G {stats['loss_G']:.3f}  {stats['images_per_s']} img/s")
    print(f"done: {run_dir / LATEST}, samples in {run_dir / 'samples'}")
    return trainer


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    if args.bench:
        from training.bench_training import measure

        print(json.dumps({"attention_impl": config.attention_impl, "batch_size": config.batch_size, **measure(config, args.bench)}))
        return
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    try:
        train(config, run_dir, resume=args.resume, resume_epochs=args.epochs)
    except (CheckpointError, FileNotFoundError, ValueError) as error:  # bad data or options: one line
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"\ninterrupted: continue with `python -m training.train --out {run_dir} --resume`") from None


if __name__ == "__main__":
    main()
