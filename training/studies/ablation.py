"""The ablation study as one command: `python -m training.studies.ablation --data DATA --epochs N [--out STUDY]`.

Trains the variants of `training.config.ABLATIONS` (BaMSGAN, SAGAN, blur-only, memory-only, DCGAN)
on the same data, seed, preset and epoch budget, scores each one's G-EMA every K epochs (and every
epoch over the last L epochs) against one real set, and writes a report into the study folder:

  ablation.md          every metric per variant at the last epoch, and the per-epoch detector table
                       over the last L epochs (the shape of the paper's Table 1), linking the pictures
  metrics.png          each metric against epoch, one line per variant, a band of ± its uncertainty
  grid.png             the same seeds through each variant's final G-EMA, a row per variant
  results.json         the numbers behind the tables; study.json: the study's options and command

Design:
- Each variant is an ordinary run, `python -m training.train --ablation V --out STUDY/V ...`, in a
  subprocess: it has its own run directory, checkpoints, stats.jsonl and metrics.jsonl, and can be
  resumed, exported or inspected like any run.
- The trainer scores G-EMA when `training.train.evaluate_now` says so (every K-th epoch and the last
  epoch of an invocation). For the per-epoch table the study therefore stops a run at each of the
  last L epochs that K would skip and resumes it (`--resume --epochs e`): a resumed run on CPU
  reproduces the uninterrupted one exactly, so the chunks change nothing but when metrics are taken.
- Interrupted, the study continues where it stopped: a finished variant is skipped, an unfinished one
  resumed from its latest checkpoint, a run directory with no checkpoint yet started again. The report
  is rebuilt from the runs' own files every time, so it always agrees with them.
- study.json holds the options; continuing a study with other options is refused in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.config import ABLATIONS, PAPER_ABLATIONS, PRESETS, TrainConfig, config_from_dict
from training.config import parse_args as parse_train_args

STUDY_FILE = "study.json"
TIMINGS_FILE = "timings.jsonl"
REPORT_FILES = ("ablation.md", "metrics.png", "grid.png", "results.json", STUDY_FILE, TIMINGS_FILE)
RUN_FILES = ("options.json", "stats.jsonl", "metrics.jsonl")  # the small files of each run worth keeping
LATEST = "checkpoint-latest.pt"  # training.train.LATEST (not imported: that pulls in the trainer at parse time)
# Options the study sets itself; a flag for the trainer must not set them a second time.
STUDY_FLAGS = ("--out", "--resume", "--ablation", "--data", "--epochs", "--seed", "--preset", "--metrics-every",
               "--metrics-count", "--metrics-data", "--detector", "--inception-weights", "--bench")
# Options that define a study: continuing with any of them changed is refused.
# How to read each metric (training/metrics/face_quality.py defines them): lower is better, or a ratio generated / real.
RATIO_METRICS = ("sharpness", "diversity", "detector")
METRIC_TITLES = {"fid": "fid (lower is better)", "kid": "kid (lower is better)", "precision": "precision (higher is better)",
                 "recall": "recall (higher is better)", "swd": "swd x1e3 (lower is better)",
                 "sharpness": "sharpness, generated / real", "diversity": "diversity, generated / real",
                 "detector": "detector face rate, generated / real"}
COMPARED = ("data", "epochs", "variants", "preset", "seed", "metrics_every", "metrics_last", "metrics_count",
            "metrics_data", "detector", "inception_weights", "grid_seeds", "train_args")


# ----------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m training.studies.ablation", allow_abbrev=False,
        description="Train every ablation variant on the same data, seed and budget; tabulate and plot their metrics. "
                    "Flags not listed here (e.g. --channels 4, --memory-fill-epoch 3) are passed to every training run.")
    parser.add_argument("--data", help="training data, as for training.train --data (default synthetic)")
    parser.add_argument("--epochs", type=int, help="epochs per variant (default: the preset's)")
    parser.add_argument("--out", help="study folder (default runs/ablation-<data>-<preset>-<epochs>ep; "
                                      "the same command continues it)")
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(ABLATIONS)} "
                                           f"(default the paper's: {','.join(PAPER_ABLATIONS)})")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default cpu")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--metrics-every", type=int, metavar="K", help="score every K epochs (default about 6 times a run)")
    parser.add_argument("--metrics-last", type=int, metavar="L",
                        help="also score each of the last L epochs: the per-epoch detector table (default 5)")
    parser.add_argument("--metrics-count", type=int, metavar="N", help="fakes and reals per evaluation (default 1000)")
    parser.add_argument("--metrics-data", help="real faces to score against; use images the runs did not train on "
                                               "(default: the training data)")
    parser.add_argument("--detector", help="face-detector cascade (default: training.metrics.face_quality.find_detector)")
    parser.add_argument("--inception-weights", help="FID/KID weights (default: training.metrics.face_quality.find_inception_weights)")
    parser.add_argument("--grid-seeds", type=int, help="seeds 0..S-1 in the side-by-side grid (default 8)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N variants at once, each on cores/N threads (an equal time budget side by side; default 1)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from what the runs hold; train nothing")
    parser.add_argument("--results", help="also copy the report and each run's small files (no checkpoints) into this folder")
    return parser.parse_known_args(argv)


def study_options(args: argparse.Namespace, train_args: list[str], saved: dict | None) -> dict:
    """The study's options: given flags, else the saved study's, else the defaults."""
    given = {
        "data": args.data, "epochs": args.epochs, "preset": args.preset, "seed": args.seed,
        "variants": args.variants.split(",") if args.variants else None,
        "metrics_every": args.metrics_every, "metrics_last": args.metrics_last, "metrics_count": args.metrics_count,
        "metrics_data": args.metrics_data, "detector": args.detector, "inception_weights": args.inception_weights,
        "grid_seeds": args.grid_seeds, "train_args": train_args or None,
    }
    if saved is not None:
        return {**{key: saved[key] for key in COMPARED}, **{key: value for key, value in given.items() if value is not None}}
    preset = given["preset"] or TrainConfig.preset
    epochs = given["epochs"] or PRESETS[preset].get("epochs", TrainConfig.epochs)
    defaults = {"data": "synthetic", "epochs": epochs, "preset": preset, "seed": 0, "variants": list(PAPER_ABLATIONS),
                "metrics_every": max(1, epochs // 6), "metrics_last": min(5, epochs), "metrics_count": 1000,
                "metrics_data": None, "detector": None, "inception_weights": None, "grid_seeds": 8, "train_args": []}
    return {**defaults, **{key: value for key, value in given.items() if value is not None}}


def check_options(options: dict) -> None:
    unknown = [variant for variant in options["variants"] if variant not in ABLATIONS]
    if unknown or not options["variants"] or len(set(options["variants"])) != len(options["variants"]):
        raise SystemExit(f"error: --variants must name distinct variants from {', '.join(ABLATIONS)}; got {','.join(options['variants'])}")
    for name in ("epochs", "metrics_every", "metrics_count", "grid_seeds"):
        if options[name] < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {options[name]}")
    if not 0 <= options["metrics_last"] <= options["epochs"]:
        raise SystemExit(f"error: --metrics-last must be between 0 and --epochs ({options['epochs']}), got {options['metrics_last']}")
    clashes = [arg.split("=")[0] for arg in options["train_args"] if arg.split("=")[0] in STUDY_FLAGS]
    if clashes:
        raise SystemExit(f"error: {clashes[0]} is set by the study itself; pass it as a study option (see --help)")
    for variant in options["variants"]:  # every run's options, checked before any training starts
        train_config(options, variant)


def default_study_dir(options: dict) -> Path:
    data = Path(options["data"].rstrip("/"))
    name = "synthetic" if options["data"] == "synthetic" else data.parent.name if any(c in data.name for c in "*?[") else data.stem
    name = re.sub(r"[^\w.-]+", "", name) or "data"
    return Path("runs") / f"ablation-{name}-{options['preset']}-{options['epochs']}ep"


def open_study(study_dir: Path, args: argparse.Namespace, train_args: list[str], command: str) -> dict:
    """Create the study folder with its options, or check that a continued study keeps them."""
    path = study_dir / STUDY_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        options = study_options(args, train_args, saved)
        changed = [key for key in COMPARED if options[key] != saved[key]]
        if changed:
            key = changed[0]
            raise SystemExit(f"error: {study_dir} is a study with {key}={saved[key]!r}, not {options[key]!r}; "
                             f"continue it with its own options or choose another --out")
        return saved
    if study_dir.exists() and any(study_dir.iterdir()):
        raise SystemExit(f"error: {study_dir} exists and is not an ablation study (no {STUDY_FILE}); choose another --out")
    options = study_options(args, train_args, None)
    check_options(options)
    study_dir.mkdir(parents=True, exist_ok=True)
    record = {**options, "command": command, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------------------------
# Training the variants


def train_argv(options: dict, variant: str, run_dir: Path, epochs: int) -> list[str]:
    """The trainer's arguments for a fresh run of `variant` that stops after `epochs` epochs."""
    argv = ["--ablation", variant, "--out", str(run_dir), "--data", options["data"], "--preset", options["preset"],
            "--epochs", str(epochs), "--seed", str(options["seed"]), "--metrics-every", str(options["metrics_every"]),
            "--metrics-count", str(options["metrics_count"])]
    for name in ("metrics_data", "detector", "inception_weights"):
        if options[name] is not None:
            argv += ["--" + name.replace("_", "-"), options[name]]
    return argv + list(options["train_args"])


def train_config(options: dict, variant: str) -> TrainConfig:
    """The variant's TrainConfig, as the trainer will build it (a bad flag fails here, before any training)."""
    config, _ = parse_train_args(train_argv(options, variant, Path("unused"), options["epochs"]))
    return config


def stop_epochs(config: TrainConfig, last: int) -> list[int]:
    """Epochs at which a run stops (and is resumed): where the trainer would not score one of the last
    `last` epochs by itself, plus the final epoch."""
    from training.train import evaluate_now

    final = config.epochs
    skipped = [epoch for epoch in range(final - last + 1, final) if not evaluate_now(config, epoch)]
    return skipped + [final]


def completed_epochs(run_dir: Path) -> int | None:
    """Epochs in the run's latest checkpoint; None when there is no checkpoint."""
    if not (run_dir / LATEST).is_file():
        return None
    from training.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / LATEST)["epoch"])


def check_run_matches(run_dir: Path, config: TrainConfig) -> None:
    """A run directory continued by the study must have been made by it, with the same options."""
    saved = json.loads((run_dir / "options.json").read_text())
    expected = dataclasses.asdict(config)
    changed = [key for key in expected if key != "epochs" and saved.get(key) != expected[key]]
    if changed:
        key = changed[0]
        raise SystemExit(f"error: {run_dir} was trained with {key}={saved.get(key)!r}, but this study needs {expected[key]!r}; "
                         f"move it away or choose another --out")


def run_variant(options: dict, study_dir: Path, variant: str, index: int) -> None:
    """Train one variant to the study's epoch count, resuming whatever it already has."""
    config, run_dir = train_config(options, variant), study_dir / variant
    done = completed_epochs(run_dir)
    if done is None and run_dir.exists():
        # Stopped before its first checkpoint: nothing to resume, and the trainer will not reuse the folder.
        print(f"{variant}: {run_dir} has no checkpoint yet; starting it again")
        shutil.rmtree(run_dir)
    if done is not None:
        check_run_matches(run_dir, config)
    stops = [epoch for epoch in stop_epochs(config, options["metrics_last"]) if epoch > (done or 0)]
    header = f"[{index}/{len(options['variants'])}] {variant}"
    if not stops:
        print(f"{header}: finished ({done} epochs), skipped")
        return
    print(f"{header}: {'resuming at epoch ' + str(done) if done else 'starting'}; "
          f"training to epoch {config.epochs} in {len(stops)} part(s), stopping at {', '.join(map(str, stops))}", flush=True)
    for stop in stops:
        if completed_epochs(run_dir) is None:
            argv = train_argv(options, variant, run_dir, stop)
        else:
            argv = ["--out", str(run_dir), "--resume", "--epochs", str(stop)]
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "training.train", *argv])
        with open(study_dir / TIMINGS_FILE, "a") as file:  # wall time per part: training + scoring + start-up
            file.write(json.dumps({"variant": variant, "epochs": [(done or 0) + 1, stop], "seconds": round(time.perf_counter() - start, 1),
                                   "exit": result.returncode}) + "\n")
        done = stop
        if result.returncode != 0:
            raise SystemExit(f"error: training {variant} stopped with exit status {result.returncode} (its output is above); "
                             f"the same command continues the study")


# ----------------------------------------------------------------------------------------------
# The report, rebuilt from the runs' files


def read_jsonl(path: Path) -> dict[int, dict]:
    """Records by epoch (the last record of an epoch wins)."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(record["epoch"]): record for record in records}


def collect(study_dir: Path, options: dict) -> dict[str, dict]:
    """Per variant: metrics and stats by epoch, epochs done, the run's images/s."""
    timings = [json.loads(line) for line in (study_dir / TIMINGS_FILE).read_text().splitlines()] if (study_dir / TIMINGS_FILE).is_file() else []
    runs = {}
    for variant in options["variants"]:
        run_dir = study_dir / variant
        stats = read_jsonl(run_dir / "stats.jsonl")
        minutes = json.loads((run_dir / "options.json").read_text()).get("minutes") if (run_dir / "options.json").is_file() else None
        train_seconds = sum(s["seconds"] for s in stats.values())
        runs[variant] = {"metrics": read_jsonl(run_dir / "metrics.jsonl"), "stats": stats,
                         "epochs_done": max(stats, default=0),
                         "budget_spent": minutes is not None and train_seconds >= 60 * minutes,  # --minutes ended it
                         "images_per_s": float(np.median([s["images_per_s"] for s in stats.values()])) if stats else None,
                         "train_seconds": round(train_seconds, 1),
                         "wall_seconds": round(sum(t["seconds"] for t in timings if t["variant"] == variant), 1)}
    return runs


def metric_names(runs: dict) -> list[str]:
    from training.metrics.face_quality import METRIC_NAMES

    seen = {name for run in runs.values() for record in run["metrics"].values() for name in record["metrics"]}
    return [name for name in METRIC_NAMES if name in seen] + sorted(seen - set(METRIC_NAMES))


def cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    if entry.get("value") is None:
        return "n/a"
    value, uncertainty = entry["value"], entry.get("uncertainty")
    return f"{value:.4g} ± {uncertainty:.2g}" if uncertainty is not None else f"{value:.4g}"


RANKING_METRIC = "fid"  # make ablation ranks the variants by it (lower is better); runs without it come last


def final_fid(run: dict) -> float:
    """The run's FID at its last scored epoch; +inf when it has none (ranked last)."""
    if not run["metrics"]:
        return math.inf
    value = run["metrics"][max(run["metrics"])]["metrics"].get(RANKING_METRIC, {}).get("value")
    return math.inf if value is None else value


def ranked(runs: dict) -> dict:
    """The runs ordered by their final FID, best first (a stable sort: the study's order among ties)."""
    return dict(sorted(runs.items(), key=lambda item: final_fid(item[1])))


def final_table(runs: dict, names: list[str]) -> list[str]:
    """Every metric per variant at its last scored epoch, variants ranked by FID."""
    lines = ["| variant | epoch | " + " | ".join(names) + " | train img/s | wall min |",
             "|---|---:|" + "---:|" * len(names) + "---:|---:|"]
    for variant, run in ranked(runs).items():
        if not run["metrics"]:
            lines.append(f"| {variant} | – |" + " – |" * len(names) + " – | – |")
            continue
        epoch = max(run["metrics"])
        entries = run["metrics"][epoch]["metrics"]
        speed = f"{run['images_per_s']:.0f}" if run["images_per_s"] else "–"
        wall = f"{run['wall_seconds'] / 60:.1f}" if run["wall_seconds"] else "–"
        lines.append(f"| {variant} | {epoch} | " + " | ".join(cell(entries.get(name)) for name in names) + f" | {speed} | {wall} |")
    return lines


def mean_sd(values: list, empty: str = "–") -> str:
    """'mean ± sd' of the values that are not None (sd across them, ddof 1); one value alone; `empty` for none."""
    values = [value for value in values if value is not None]
    if not values:
        return empty
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}" if len(values) > 1 else f"{values[0]:.4g}"


def mean_table(runs: dict, names: list[str], epochs: list[int]) -> list[str]:
    """Every metric per variant as the mean over `epochs`, ± the standard deviation across them: the
    epoch-to-epoch wander of a GAN is usually larger than one evaluation's uncertainty."""
    lines = ["| variant | epochs | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for variant, run in runs.items():
        scored = [epoch for epoch in epochs if epoch in run["metrics"]]
        row = []
        for name in names:
            values = [run["metrics"][epoch]["metrics"].get(name, {}).get("value") for epoch in scored]
            row.append(mean_sd(values, empty="n/a" if scored else "–"))
        span = f"{scored[0]}–{scored[-1]} ({len(scored)})" if scored else "–"
        lines.append(f"| {variant} | {span} | " + " | ".join(row) + " |")
    return lines


def distortion(entry: dict | None) -> dict | None:
    """1 - the detector ratio: the share of generated faces the detector misses beyond the real faces' own
    misses, the stand-in for the paper's distortion rate (DR); same uncertainty."""
    if entry is None or entry.get("value") is None:
        return entry
    return {**entry, "value": entry.get("distortion_proxy", 1.0 - entry["value"])}  # older metrics.jsonl lack the field


def per_epoch_table(runs: dict, epochs: list[int]) -> list[str]:
    """DR (1 - detector) per epoch (rows) and variant (columns), with the mean and standard deviation
    over those epochs: the shape of the paper's Table 1."""
    variants = list(runs)

    def entry(variant: str, epoch: int) -> dict | None:
        record = runs[variant]["metrics"].get(epoch)
        return distortion(record["metrics"].get("detector")) if record else None

    lines = ["| epoch | " + " | ".join(f"{variant} (DR)" for variant in variants) + " |", "|---:|" + "---:|" * len(variants)]
    for epoch in epochs:
        lines.append(f"| {epoch} | " + " | ".join(cell(entry(variant, epoch)) for variant in variants) + " |")
    summary = []
    for variant in variants:
        summary.append(mean_sd([e["value"] for e in (entry(variant, epoch) for epoch in epochs) if e]))
    lines.append("| mean ± sd over epochs | " + " | ".join(summary) + " |")
    return lines


def series(run: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, values and uncertainties (0 where none) of one metric in one run, where it has a value."""
    rows = [(epoch, record["metrics"][name]["value"], record["metrics"][name].get("uncertainty") or 0.0)
            for epoch, record in sorted(run["metrics"].items())
            if record["metrics"].get(name, {}).get("value") is not None]
    return tuple(np.array(column, dtype=float) for column in zip(*rows)) if rows else (np.zeros(0),) * 3


def plot_metrics(runs: dict, names: list[str], path: Path, replay_epoch: int | None = None) -> Path | None:
    """A panel per metric: value against epoch, a line per variant, a band of ± its uncertainty; ratio
    metrics get a line at 1 (the real faces), and a dotted line marks where memory replay begins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [name for name in names if any(len(series(run, name)[0]) for run in runs.values())]
    if not names:
        return None
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    colours = {variant: f"C{index}" for index, variant in enumerate(ABLATIONS)}
    for axis, name in zip(axes.flat, names):
        for variant, run in runs.items():
            epochs, values, uncertainty = series(run, name)
            if len(epochs):
                axis.plot(epochs, values, marker="o", markersize=3, color=colours[variant], label=variant)
                axis.fill_between(epochs, values - uncertainty, values + uncertainty, color=colours[variant], alpha=0.2)
        if name in RATIO_METRICS:
            axis.axhline(1.0, color="0.5", linewidth=0.8, linestyle="--")
        if replay_epoch is not None:
            axis.axvline(replay_epoch, color="0.5", linewidth=0.8, linestyle=":")
        axis.set_title(METRIC_TITLES.get(name, name), fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def seed_rows(study_dir: Path, variants: list[str], count: int) -> tuple[np.ndarray, list[str]]:
    """uint8 [rows * count, 64, 64, 3]: seeds 0..count-1 through each variant's final G-EMA (variants
    without a checkpoint left out), and a label per row."""
    from training.checkpoint import generator_from_checkpoint, load_checkpoint
    from training.metrics.face_quality import faces_from_generator

    rows, labels = [], []
    for variant in variants:
        checkpoint = study_dir / variant / LATEST
        if checkpoint.is_file():
            state = load_checkpoint(checkpoint)
            rows.append(faces_from_generator(generator_from_checkpoint(state), count))
            labels.append(f"{variant}\nepoch {state['epoch']}")
    return (np.concatenate(rows) if rows else np.zeros((0, 64, 64, 3), np.uint8)), labels


def seed_grid(study_dir: Path, variants: list[str], count: int, path: Path) -> Path | None:
    """The side-by-side grid: a row per variant, the same seeds in each column, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.data.images import image_grid

    faces, labels = seed_rows(study_dir, variants, count)
    if not labels:
        return None
    grid = image_grid(faces, columns=count)
    height, width = grid.shape[:2]
    scale, margin = 2, 110  # 2 screen pixels per image pixel, room for the labels on the left
    figure = plt.figure(figsize=((scale * width + margin) / 100, scale * height / 100), dpi=100)
    axis = figure.add_axes([margin / (scale * width + margin), 0, scale * width / (scale * width + margin), 1])
    axis.imshow(grid, interpolation="nearest")
    step = height / len(labels)
    axis.set_yticks([step * (index + 0.5) for index in range(len(labels))], labels, fontsize=9)
    axis.set_xticks([])
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def unavailable_notes(runs: dict, names: list[str]) -> list[str]:
    notes = {}
    for run in runs.values():
        for record in run["metrics"].values():
            for name in names:
                reason = record["metrics"].get(name, {}).get("unavailable")
                if reason:
                    notes.setdefault(name, reason)
    return [f"- {name}: n/a — {reason}" for name, reason in notes.items()]


def replay_start(study_dir: Path, options: dict) -> int | None:
    """The first epoch (1-based, as in the logs) whose D steps replay the memory, for the variants that have one:
    as the run recorded it (a fork moves the replay to after its own fill), else as the study's flags give it."""
    for variant in options["variants"]:
        recorded = study_dir / variant / "options.json"
        if recorded.is_file():
            config = config_from_dict({k: v for k, v in json.loads(recorded.read_text()).items() if k != "run"})
        else:
            config = train_config(options, variant)
        if config.memory and config.memory_replay_epoch < config.epochs:
            return config.memory_replay_epoch + 1
    return None


def write_report(study_dir: Path, options: dict) -> Path:
    """ablation.md (header, run status, tables, plot, grid) and results.json of the study."""
    runs = collect(study_dir, options)
    names = metric_names(runs)
    last_epochs = list(range(options["epochs"] - options["metrics_last"] + 1, options["epochs"] + 1))
    replay = replay_start(study_dir, options)
    plot = plot_metrics(runs, names, study_dir / "metrics.png", replay)
    grid = seed_grid(study_dir, options["variants"], options["grid_seeds"], study_dir / "grid.png")
    lines = [*report_header(options), *report_status(runs, options), *report_tables(runs, names, last_epochs)]
    if plot:
        lines += ["## Metrics against epoch", "",
                  "One line per variant, a band of ± the metric's uncertainty; dashed: the real faces' value of a ratio"
                  + (f"; dotted: epoch {replay}, the first whose D steps replay the memory (variants that differ only "
                     "by the memory are identical before it, so their lines coincide)" if replay else "") + ".", "",
                  f"![metrics against epoch, one line per variant]({plot.name})", ""]
    if grid:
        lines += [f"## The same seeds (0–{options['grid_seeds'] - 1}) through each variant's final G-EMA", "",
                  f"![seeds through each variant]({grid.name})", ""]
    report = study_dir / "ablation.md"
    report.write_text("\n".join(lines))
    results = {"options": options, "last_epochs": last_epochs, "variants": {
        variant: {"epochs_done": run["epochs_done"], "images_per_s": run["images_per_s"], "train_seconds": run["train_seconds"],
                  "wall_seconds": run["wall_seconds"],
                  "metrics": {str(epoch): record["metrics"] for epoch, record in sorted(run["metrics"].items())}}
        for variant, run in runs.items()}}
    (study_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return report


def report_header(options: dict) -> list[str]:
    """The study's command, data, flags and how it was scored."""
    count = options["metrics_count"]
    real_set = options["metrics_data"] or options["data"] + " (the training data)"
    return [
        f"# Ablation study: {', '.join(options['variants'])}",
        "",
        f"`{options['command']}`",
        "",
        f"Data `{options['data']}`, preset {options['preset']}, seed {options['seed']}, {options['epochs']} epochs per variant"
        + (f", trainer flags `{' '.join(options['train_args'])}`" if options["train_args"] else "") + ". "
        f"G-EMA scored every {options['metrics_every']} epoch(s) and at each of the last {options['metrics_last']}: "
        f"{count} faces (seeds 0–{count - 1}) against {count} real faces from `{real_set}`. "
        "Values are ± the metric's own uncertainty (training/metrics/face_quality.py). "
        "train img/s: the median epoch's training speed; wall min: the variant's whole time, training, scoring and start-up.",
        "",
    ]


def report_status(runs: dict, options: dict) -> list[str]:
    """Runs still short of their epochs (the same command continues them), and runs their --minutes ended."""
    lines = []
    unfinished = [v for v, run in runs.items() if run["epochs_done"] < options["epochs"] and not run["budget_spent"]]
    if unfinished:
        progress = ", ".join(f"{variant} ({runs[variant]['epochs_done']}/{options['epochs']} epochs)" for variant in unfinished)
        lines += [f"**Unfinished:** {progress}; the same command continues the study.", ""]
    budgeted = [variant for variant, run in runs.items() if run["budget_spent"]]
    if budgeted:
        ended = ", ".join(f"{v} after {runs[v]['epochs_done']} epochs ({runs[v]['train_seconds'] / 60:.1f} min)" for v in budgeted)
        lines += [f"**Ended by the time budget** (--minutes, training time only): {ended}.", ""]
    return lines


def report_tables(runs: dict, names: list[str], last_epochs: list[int]) -> list[str]:
    """Every metric at the last scored epoch, their mean over the last epochs, and DR per epoch (Table 1's shape)."""
    from training.metrics.face_quality import INCEPTION_METRICS

    ranking = ("Rows are ranked by FID at the last scored epoch, best first." if any(math.isfinite(final_fid(run)) for run in runs.values())
               else "No FID on record, so rows keep the study's order (FID needs metrics_count >= 100).")
    lines = ["## Every metric at the last scored epoch", "", ranking, "", *final_table(runs, names), ""]
    lines += unavailable_notes(runs, names) + [""] if unavailable_notes(runs, names) else []
    if len(last_epochs) > 1:
        scored = [name for name in names if name not in INCEPTION_METRICS or any(
            record["metrics"].get(name, {}).get("value") is not None for run in runs.values() for record in run["metrics"].values())]
        lines += [f"## Every metric as the mean over the last {len(last_epochs)} epochs, ± the standard deviation across them", "",
                  *mean_table(ranked(runs), scored, last_epochs), ""]
    lines += ["Lower is better for fid, kid and swd, higher for precision and recall. sharpness, diversity and detector are ratios generated / real: "
              "1 is the real faces' own value (below 1: blurrier, less diverse, fewer faces found).", ""]
    if "detector" in names and last_epochs:
        lines += [f"## Distortion rate per epoch over the last {len(last_epochs)} epochs (the shape of the paper's Table 1)", "",
                  "DR = 1 − detector: the share of generated faces in which the anime-face detector finds no face, "
                  "beyond its misses on real faces (lower is better). ± is the bootstrap uncertainty of each epoch's "
                  "figure; the last row is the mean and the standard deviation across the epochs.", "",
                  *per_epoch_table(runs, last_epochs), ""]
    return lines


def copy_results(study_dir: Path, options: dict, destination: Path) -> None:
    """The report and each run's small files (no checkpoints) into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (study_dir / name).is_file():
            shutil.copy(study_dir / name, destination / name)
    for variant in options["variants"]:
        for name in RUN_FILES:
            source = study_dir / variant / name
            if source.is_file():
                (destination / variant).mkdir(exist_ok=True)
                shutil.copy(source, destination / variant / name)


def main(argv: list[str] | None = None) -> None:
    args, train_args = parse_args(argv)
    provisional = study_options(args, train_args, None)
    study_dir = Path(args.out) if args.out else default_study_dir(provisional)
    if args.report_only:
        if not (study_dir / STUDY_FILE).is_file():
            raise SystemExit(f"error: {study_dir} is not an ablation study (no {STUDY_FILE})")
        options = json.loads((study_dir / STUDY_FILE).read_text())
    else:
        if args.jobs > 1 and not any(arg.split("=")[0] == "--threads" for arg in train_args):
            # The cores shared out, recorded in the study's train_args: a continued study uses the same.
            train_args = [*train_args, "--threads", str(max(1, len(os.sched_getaffinity(0)) // args.jobs))]
        command = shlex.join(["python", "-m", "training.studies.ablation", *(sys.argv[1:] if argv is None else argv)])
        options = open_study(study_dir, args, train_args, command)
        print(f"ablation study in {study_dir}: {', '.join(options['variants'])}, {options['epochs']} epochs each")
        try:
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each variant is a subprocess
                for finished in [pool.submit(run_variant, options, study_dir, variant, index)
                                 for index, variant in enumerate(options["variants"], 1)]:
                    finished.result()  # the first failure, in variant order
        except KeyboardInterrupt:
            raise SystemExit(f"\ninterrupted: the same command continues the study in {study_dir}") from None
    report = write_report(study_dir, options)
    if args.results:
        copy_results(study_dir, options, Path(args.results))
    print(f"report: {report} (plots {study_dir / 'metrics.png'}, grid {study_dir / 'grid.png'})")


if __name__ == "__main__":
    main()
