"""Every training hyperparameter in one place: a dataclass, two presets, and the CLI built from it.

One source of defaults: the dataclass defaults ARE the "cpu" preset (the CLI's default), and
"paper" lists only what it changes. `--help` prints both.

Presets:
- "cpu": a narrow model (channels=16) that trains at ~200 images/s on 2 CPU cores, so
  `make train` on the synthetic default finishes in minutes and still draws faces. Its Adam
  uses beta1=0.5 and lr_G=2e-4 (still TTUR: lr_D=4e-4): measured on the synthetic faces, SAGAN's
  beta1=0 left G collapsed onto one face for ~600 steps (batch-std of outputs 0.18) where
  beta1=0.5 had diverse faces (0.27); a run of a few minutes cannot wait for the slow start.
- "paper": the authors' model (channels=64: 512 channels at 4x4), SAGAN's TTUR Adam (lr_G=1e-4,
  lr_D=4e-4, beta1=0, beta2=0.9), batch 64, 300 epochs, memory filled from epoch 20 and replayed
  from epoch 25. For GPUs.

`batch_size` is the global batch: under torchrun each of the N processes takes batch_size / N
images of every step (training/distributed.py), so the learning rates need no rescaling.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from training.networks.attention import ATTENTION_IMPLS
from training.augment import parse_policy
from training.constants import Z_DIM
from training.networks.sagan import G_ATTENTION
from training.loss import FAKE_TERMS, check_loss


@dataclass
class TrainConfig:
    # Data
    data: str = "synthetic"  # "synthetic", a folder of images, a .tar, or a glob of tar shards
    synthetic_size: int = 4096
    max_images: int | None = None  # use only the first N images of the data
    cache_dir: str | None = None  # decoded-dataset cache (default ~/.cache/bamsgan)

    # Model
    preset: str = "cpu"
    channels: int = 16  # base width c: G has 8c channels at 4x4, D 8c at 4x4
    attention: bool = True  # False gives the DCGAN-like ablation
    attention_impl: str = "auto"  # auto | reference | sdpa | kernel
    g_attention: str = "16,32"  # the generator's attention resolutions (the paper: 16,32); "16" drops the costly 32x32 layer

    # Loss and optimisation (SAGAN's TTUR Adam; the paper's weight decay 1e-4 as regularisation)
    loss: str = "hinge"  # hinge | bce (the paper's log form) | lsgan | wgan-gp (training/loss.py)
    label_smoothing: float = 0.0  # bce only: D aims at 1 - s for reals and s for fakes (the reports' DCGAN trick: 0.1)
    gp_weight: float = 10.0  # wgan-gp: the gradient penalty's lambda (Gulrajani et al.: 10)
    d_steps: int = 1  # D steps per G step (wgan-gp's critic iterations: 5); each D step takes the next batch
    lr_g: float = 2e-4
    lr_d: float = 4e-4
    beta1: float = 0.5  # SAGAN (the paper preset): 0
    beta2: float = 0.9
    weight_decay: float = 1e-4
    # False: the decay skips spectrally-normalised weights, where W/sigma(W) ignores their scale and
    # decay only raises the effective learning rate; True decays them too (the paper's plain Adam).
    decay_normalised: bool = False
    fake_terms: str = "average"  # sum (the paper) | average: how D's three negative terms are combined
    ema_decay: float = 0.999  # EMA of G's weights per step, ramped up over the first steps (when ema_kimg is None)
    # StyleGAN's EMA instead: a half-life of ema_kimg thousand images (decay 0.5 ** (batch / (1000 ema_kimg))
    # per step, whatever the batch), and with ema_rampup at most ema_rampup x the images seen so far
    # (StyleGAN2-ADA: 10 kimg, ramp-up 0.05). None: the fixed ema_decay above.
    ema_kimg: float | None = None
    ema_rampup: float | None = None
    # True: after each epoch G-EMA gets its own spectral-norm vectors and BatchNorm statistics
    # ("standing statistics", from its own outputs); False: it copies G's (measured worse, docs/results.md)
    ema_standing_stats: bool = True
    flip: bool = True  # mirror real (and blurred) faces left-right at random
    # DiffAugment (training/augment.py): comma-separated transforms from color, translation, cutout
    # (the paper's full policy: "color,translation,cutout") applied to every image D sees; "" = off
    augment: str = ""

    # Edge-blurred negatives (Algorithm 1)
    blur: bool = True
    blur_fraction: float = 1.0  # share of the data edge-blurred (the paper: "a portion", 0.1); each step draws from it
    canny_low: int = 100
    canny_high: int = 200
    blur_kernel: int = 5
    blur_weight: float = 1.0

    # Memory repository replayed as fakes
    memory: bool = True
    memory_capacity: int = 1024
    memory_fill_epoch: int = 5  # first epoch (0-based) whose generated images are stored
    memory_replay_epoch: int = 6  # first epoch whose D step sees the memory as fakes
    memory_store_per_step: int = 8  # generated images stored per step while filling
    memory_weight: float = 1.0

    # Schedule
    epochs: int = 10
    # A time budget: stop after the first epoch that brings the run's training time (summed over
    # resumes; metrics and checkpoints not counted) to this many minutes; `epochs` stays the cap.
    minutes: float | None = None
    batch_size: int = 32  # global: split over the processes of a torchrun launch
    seed: int = 0

    # Runtime
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (on a CPU only with cpu_amp too)
    # bf16 autocast on a CPU with native bf16 (avx512_bf16 / amx_bf16; elsewhere ignored): 1.05-1.30x the images/s and
    # the same FID per image over the first 560 kimg, but the one long bf16 run fell behind its fp32 twin late
    # (docs/results.md, "Training throughput per CPU"), so fp32 stays the default until a long comparison settles it
    cpu_amp: bool = False
    channels_last: bool = True  # NHWC activations (CUDA and oneDNN on CPU)
    compile: bool = False  # torch.compile G and D
    threads: int = 0  # torch CPU threads; 0 = the free cores
    sample_seeds: int = 64  # fixed seeds 0..N-1 drawn into samples/epoch-XXXX.png
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 3  # per-epoch checkpoints kept (checkpoint-latest.pt always)
    tensorboard: bool = True  # TensorBoard event files in the run directory (training/tensorboard_log.py), beside stats.jsonl

    # Face-quality metrics of G-EMA during training (training/metrics/face_quality.py), appended to metrics.jsonl
    metrics_every: int = 0  # epochs; 0 = off. When on, the last epoch is always evaluated
    # Fakes (seeds 0..N-1) and reals per evaluation. With FID (>= 100) each evaluation runs N Inception
    # passes: ~2-3 min at N = 1000 on 2 CPU cores (reals cached); seconds on a GPU.
    metrics_count: int = 1000
    metrics_data: str | None = None  # real images for the metrics (a --data source); default: the training data
    detector: str | None = None  # face-detector cascade; default: training.metrics.face_quality.find_detector()
    inception_weights: str | None = None  # FID/KID weights; default: training.metrics.face_quality.find_inception_weights()

    def __post_init__(self) -> None:
        if self.fake_terms not in FAKE_TERMS:
            raise ValueError(f"fake_terms must be one of {FAKE_TERMS}, got {self.fake_terms!r}")
        check_loss(self.loss, self.label_smoothing)
        if self.d_steps < 1 or self.gp_weight < 0:
            raise ValueError(f"d_steps must be at least 1 and gp_weight at least 0, got {self.d_steps} and {self.gp_weight}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.channels < 1:
            raise ValueError("batch_size, epochs and channels must be positive")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.metrics_every < 0 or self.metrics_count < 1:
            raise ValueError("metrics_every must be >= 0 (0 = off) and metrics_count positive")
        if (self.ema_kimg is not None and self.ema_kimg <= 0) or (self.ema_rampup is not None and self.ema_rampup <= 0):
            raise ValueError(f"ema_kimg and ema_rampup must be positive (or unset), got {self.ema_kimg} and {self.ema_rampup}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        parse_policy(self.augment)
        parse_resolutions(self.g_attention)
        if self.memory_replay_epoch < self.memory_fill_epoch:
            raise ValueError("memory_replay_epoch must not come before memory_fill_epoch")

    @property
    def model(self) -> dict:
        """The architecture: what a checkpoint needs to rebuild its networks."""
        return {"z_dim": Z_DIM, "channels": self.channels, "attention": self.attention, "g_attention": list(parse_resolutions(self.g_attention))}


def parse_resolutions(text: str) -> tuple[int, ...]:
    """'16,32' -> (16, 32): the generator's attention resolutions, each one of G_ATTENTION's."""
    try:
        resolutions = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"g_attention takes resolutions separated by commas (e.g. 16,32), got {text!r}") from None
    if not resolutions or not set(resolutions) <= set(G_ATTENTION):
        raise ValueError(f"g_attention must name some of {','.join(map(str, G_ATTENTION))}, got {text!r}")
    return resolutions


PRESETS: dict[str, dict] = {
    "cpu": {},  # the dataclass defaults
    "paper": dict(channels=64, epochs=300, batch_size=64, lr_g=1e-4, beta1=0.0, synthetic_size=8192, fake_terms="sum", flip=False, blur_fraction=0.1,
                  memory_capacity=4096, memory_fill_epoch=20, memory_replay_epoch=25),
}

# The paper's ablation study (`make ablation` trains these). Each names both switches, so that on a
# fork, which starts from another run's config, a variant switches them to what its name says.
PAPER_ABLATIONS: dict[str, dict] = {
    "bamsgan": dict(blur=True, memory=True),
    "sagan": dict(blur=False, memory=False),  # SAGAN with the paper's regularisation
    "blur-only": dict(blur=True, memory=False),
    "memory-only": dict(blur=False, memory=True),
    "dcgan": dict(blur=False, memory=False, attention=False),
}

# The tuning ladder behind today's CPU defaults: each step adds one change to the step before,
# starting from the CPU preset as it was ("v0-before"); docs/results.md ("the tuning ladder") has
# the measured table. A step that did not help is listed with what it did and left out after it.
BEFORE_TUNING = dict(fake_terms="sum", decay_normalised=True, ema_standing_stats=False, flip=False, blur_fraction=0.1)
TUNING_LADDER: dict[str, dict] = {
    "v0-before": BEFORE_TUNING,
    "v1-average-negatives": {**BEFORE_TUNING, "fake_terms": "average"},
    "v2-decay-unnormalised": {**BEFORE_TUNING, "fake_terms": "average", "decay_normalised": False},
    "v3-ema-own-statistics": {**BEFORE_TUNING, "fake_terms": "average", "decay_normalised": False, "ema_standing_stats": True},
    "v4-flip": {**BEFORE_TUNING, "fake_terms": "average", "decay_normalised": False, "ema_standing_stats": True, "flip": True},
    "v5-blur-every-face": {**BEFORE_TUNING, "fake_terms": "average", "decay_normalised": False, "ema_standing_stats": True,
                           "flip": True, "blur_fraction": 1.0},
}

# Candidate fixes for BaMSGAN's collapse on long runs, each one change from today's defaults,
# so a study can put any of them beside "bamsgan" and "sagan" (training.studies.ablation --variants ...).
STYLEGAN_EMA = dict(ema_kimg=10.0, ema_rampup=0.05)
DIFF_AUGMENT = "color,translation,cutout"
CANDIDATES: dict[str, dict] = {
    "ema-10kimg": STYLEGAN_EMA,  # StyleGAN2-ADA's EMA: 10 kimg half-life, ramp-up 0.05 (today ~22 kimg)
    "diffaugment": dict(augment=DIFF_AUGMENT),
    # 3 seeds each at 140 kimg (docs/results.md): FID 344 ± 8, 329 ± 24, 324 ± 13 and 347 ± 26 (in this
    # order) against BaMSGAN 349 ± 29 and SAGAN 288 ± 26. None closes the gap: D still scores blurred faces nearly as real.
    "blur-10pct": dict(blur_fraction=0.1),  # the paper's share of blurred faces
    "blur-weight-0.5": dict(blur_weight=0.5),
    "blur-weight-0.25": dict(blur_weight=0.25),  # the next step down: G(z) 4/9 of D's negatives, blurred reals 1/9
    "memory-weight-0.5": dict(memory_weight=0.5),
    # memory-only averages G(z) with the memory, so G(z) has half of D's negative weight (SAGAN: all of it).
    # Summed, G(z) keeps its full weight and the memory term comes on top. 3 seeds at 140 kimg: FID 306 ± 27,
    # against memory-only 327 ± 20 and SAGAN 288 ± 26: the share is about half of the memory's cost.
    "memory-only-sum": dict(blur=False, fake_terms="sum"),
    # The paper's sum: G(z) keeps the weight it has in SAGAN (averaged, it has 1/3 of D's negatives once
    # memory replays). Probed on one seed: D settles at -1 on every input, as the tuning ladder's v0 did.
    "negatives-sum": dict(fake_terms="sum"),
    "sagan-ema-10kimg": dict(blur=False, memory=False, **STYLEGAN_EMA),
    # DiffAugment's policy for larger sets (its authors add cutout for small ones): 35,000 faces are not small.
    "sagan-diffaugment": dict(blur=False, memory=False, augment="color,translation"),
    "sagan-c32": dict(blur=False, memory=False, channels=32),  # twice the width: FID per CPU-hour against c = 16
    "sagan-g-attention-16": dict(blur=False, memory=False, g_attention="16"),  # no 32x32 attention: FID per CPU-hour
    "sagan-bf16": dict(blur=False, memory=False, cpu_amp=True),  # SAGAN in bf16 autocast where the CPU has it: the long-run question
}

# The student reports' and the paper's baselines, on SAGAN's networks (blur and memory off) so only the
# loss differs from "sagan"; "dcgan-tricks" is the plain DCGAN with the reports' label smoothing (TTUR:
# the CPU preset's lr_d = 2 lr_g already).
SAGAN_NETS = dict(blur=False, memory=False)
BASELINES: dict[str, dict] = {
    "bce": dict(SAGAN_NETS, loss="bce"),
    "lsgan": dict(SAGAN_NETS, loss="lsgan"),
    # Gulrajani et al.: lambda 10, 5 critic steps per G step, Adam lr 1e-4 for both, betas (0, 0.9).
    "wgan-gp": dict(SAGAN_NETS, loss="wgan-gp", gp_weight=10.0, d_steps=5, lr_g=1e-4, lr_d=1e-4, beta1=0.0, beta2=0.9),
    "dcgan-tricks": dict(SAGAN_NETS, attention=False, loss="bce", label_smoothing=0.1),
}

ABLATIONS: dict[str, dict] = {**PAPER_ABLATIONS, **TUNING_LADDER, **CANDIDATES, **BASELINES}  # what --ablation can name


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Build the CLI from the dataclass: every field is a --flag; --preset sets defaults first."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description="Train BaMSGAN.")
    parser.add_argument("--out", required=False, help="run directory (default runs/<time>-<data>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--bench", type=int, default=0, metavar="STEPS",
                        help="time STEPS full training steps on random images, print images/s and peak memory, exit")
    parser.add_argument("--fork", metavar="CHECKPOINT",
                        help="start a new run (--out) from another run's checkpoint: its config and state, with --ablation and "
                             "the flags given switched (e.g. --blur --memory); --seed K reseeds what follows the fork")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), default=None, help="switch blur/memory/attention off (default bamsgan)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help = f"default {default!r}" + "".join(
            f" ({preset}: {values[f.name]!r})" for preset, values in PRESETS.items() if values.get(f.name, default) != default)
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, help=help)
    args = parser.parse_args(argv)
    preset = args.preset or defaults.preset
    if preset not in PRESETS:
        parser.error(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if args.fork and args.resume:
        parser.exit(2, f"{parser.prog}: error: --fork starts a new run and --resume continues one: give one of them\n")
    values = {**PRESETS[preset], **ABLATIONS[args.ablation or "bamsgan"], "preset": preset, **given_fields(args)}
    try:
        config = TrainConfig(**values)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")  # one line: the bad value and the choices
    return config, args


def given_fields(args: argparse.Namespace) -> dict:
    """The config fields given on the command line (the rest are None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


ARCHITECTURE_FIELDS = ("channels", "attention", "g_attention")  # a fork keeps the networks it loads


def fork_config(saved: TrainConfig, args: argparse.Namespace, fork_epoch: int) -> tuple[TrainConfig, list[str]]:
    """A forked run's config: the checkpoint's own, with --ablation's switches and the given flags on
    top; and what to tell the user. Memory switched on fills from the fork's first epoch and replays
    from the next (its fill and replay epochs, unless given), so it never replays an empty repository.
    The checkpoint's time budget was its own run's: a fork's --minutes counts from the fork (none unless given)."""
    changes = {**(ABLATIONS[args.ablation] if args.ablation else {}), **given_fields(args)}
    changes.pop("preset", None)
    minutes = changes.pop("minutes", None)
    changes = {name: value for name, value in changes.items() if getattr(saved, name) != value}
    moved = [name for name in ARCHITECTURE_FIELDS if name in changes]
    if moved:
        raise ValueError(f"a fork keeps the checkpoint's networks; it cannot change {', '.join(moved)}")
    notes = []
    if changes.get("memory") and not {"memory_fill_epoch", "memory_replay_epoch"} & set(given_fields(args)):
        changes.update(memory_fill_epoch=fork_epoch, memory_replay_epoch=fork_epoch + 1)
        notes.append(f"fork: the memory starts empty, fills from epoch {fork_epoch + 1} and replays from epoch {fork_epoch + 2}")
    notes.append("fork: " + (", ".join(f"{name} {getattr(saved, name)!r} -> {value!r}" for name, value in changes.items())
                             or "no change: an exact continuation"))
    return dataclasses.replace(saved, **changes, minutes=minutes), notes


# What a saved run that predates a field trained with: the value from before the field existed.
BEFORE_THE_FIELDS = {**BEFORE_TUNING, "cpu_amp": False}


def config_from_dict(values: dict) -> TrainConfig:
    """Rebuild a TrainConfig from a checkpoint or options.json (unknown keys are an error). A run
    saved before a field existed keeps the recipe it was trained with (BEFORE_THE_FIELDS), not
    today's defaults."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    return TrainConfig(**{**BEFORE_THE_FIELDS, **values})


