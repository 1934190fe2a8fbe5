"""FID against images and against CPU-hours, for one run or several side by side (a width comparison, a long release run).

    python -m training.studies.curves runs/width-c16 runs/width-c32 --out training/results/width-long [--rate width-c16=114.2 ...]

Reads each run's stats.jsonl (per epoch: images, wall seconds and, where recorded, CPU seconds) and
metrics.jsonl (the in-training scores, `--metrics-every`), across every sitting of a resumed run.
The CPU time of an epoch is its recorded `cpu_seconds` (all processes' CPU time: a busy machine does
not inflate it), else its wall seconds x the run's threads x processes (an upper bound when other
work shared the cores). `--rate NAME=IMAGES_PER_S` converts a run's images into CPU-hours at a
throughput measured on a quiet machine instead (`python -m training.studies.bench_training`,
images/s per thread-count x threads), which is how runs that shared a machine compare fairly.

Writes --out/curves.md (a table per run: epoch, kimg, CPU-hours, FID ± sd, precision, recall, and
the trend over the last evaluations), --out/curves.png (FID against kimg, and against CPU-hours) and
--out/samples.png: each run's last sample grid side by side (the trainer draws every grid from the
same 64 seeds), under its epoch, kimg and FID at that epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

TREND_POINTS = 4  # the last evaluations the end-of-run trend is fitted to


class CurvesError(ValueError):
    """A run that cannot be read, in one line."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def cores_used(run: Path) -> float:
    """Threads x processes the run trained with (the first sitting's; options.json)."""
    options = json.loads((run / "options.json").read_text()) if (run / "options.json").is_file() else {}
    info = options.get("run", {})
    return float(info.get("threads", 1)) * float(info.get("processes", 1))


def curve(run: Path, rate: float | None = None) -> list[dict]:
    """One point per scored epoch: epoch, kimg, cpu_hours, fid (value, sd), precision, recall."""
    stats, scored = read_jsonl(run / "stats.jsonl"), read_jsonl(run / "metrics.jsonl")
    if not stats:
        raise CurvesError(f"{run} has no stats.jsonl: not a training run (or not one epoch done)")
    cores, hours, spent = cores_used(run), {}, 0.0
    for record in stats:
        spent += record.get("cpu_seconds") or record["seconds"] * cores
        hours[record["epoch"]] = spent / 3600
    points = []
    for record in scored:
        figures = record["metrics"]
        value = lambda name, key="value": (figures.get(name) or {}).get(key)
        kimg = record["kimg"]
        points.append({"epoch": record["epoch"], "kimg": kimg, "n": record["n"],
                       "cpu_hours": kimg * 1000 / rate / 3600 if rate else hours.get(record["epoch"]),
                       "fid": value("fid"), "fid_sd": value("fid", "uncertainty"),
                       "precision": value("precision"), "recall": value("recall")})
    return [point for point in points if point["fid"] is not None]


def trend(points: list[dict]) -> float | None:
    """FID change per CPU-hour over the last TREND_POINTS evaluations (least squares), or None."""
    tail = [(p["cpu_hours"], p["fid"]) for p in points[-TREND_POINTS:] if p["cpu_hours"] is not None]
    if len(tail) < 2:
        return None
    return float(np.polyfit(*zip(*tail), 1)[0])


def table(name: str, points: list[dict]) -> list[str]:
    figure = lambda value, pattern: "–" if value is None else pattern.format(value)
    lines = [f"## {name}", "", "| epoch | kimg | CPU-hours | N | FID ↓ | precision ↑ | recall ↑ |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['epoch']} | {p['kimg']:.0f} | {figure(p['cpu_hours'], '{:.2f}')} | {p['n']} | "
              f"{p['fid']:.1f} ± {figure(p['fid_sd'], '{:.1f}')} | {figure(p['precision'], '{:.3f}')} | {figure(p['recall'], '{:.3f}')} |"
              for p in points]
    slope = trend(points)
    lines += ["", f"Trend over the last {min(TREND_POINTS, len(points))} evaluations: "
              + ("n/a" if slope is None else f"{slope:+.1f} FID per CPU-hour"), ""]
    return lines


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in curves.items():
        for axis, key in zip(axes, ("kimg", "cpu_hours")):
            shown = [p for p in points if p[key] is not None]
            axis.errorbar([p[key] for p in shown], [p["fid"] for p in shown], yerr=[p["fid_sd"] or 0 for p in shown],
                          marker="o", markersize=3, capsize=2, label=name)
    for axis, label in zip(axes, ("thousands of images shown to D", "CPU-hours of training")):
        axis.set_xlabel(label)
        axis.set_ylabel("FID (in-training N, held-out reals) ↓")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def last_samples(run: Path) -> tuple[int, Path] | None:
    """(epoch, path) of the run's last sample grid: samples/epoch-XXXX.png as the trainer writes it, or
    samples-epoch-XXXX.png as a results folder keeps it; None when it has none."""
    grids = [(int(match.group(1)), path) for path in [*run.glob("samples/epoch-*.png"), *run.glob("samples-epoch-*.png")]
             if (match := re.search(r"epoch-(\d+)\.png$", path.name))]
    return max(grids) if grids else None


def draw_samples(runs: list[Path], curves: dict[str, list[dict]], path: Path) -> Path | None:
    """The runs' last sample grids side by side, each under its name, epoch, kimg and FID at that epoch; None without grids."""
    from PIL import Image

    from training.data.images import side_by_side

    panels = []
    for run in runs:
        found = last_samples(run)
        if found is None:
            continue
        epoch, grid = found
        scored = {point["epoch"]: point for point in curves[run.name]}.get(epoch)
        label = f"{run.name}: epoch {epoch}" + (f", {scored['kimg']:.0f} kimg, FID {scored['fid']:.1f} (N = {scored['n']})" if scored else "")
        panels.append((np.asarray(Image.open(grid).convert("RGB")), label))
    return side_by_side(panels, path) if panels else None


def parse_rates(pairs: list[str], runs: list[Path]) -> dict[str, float]:
    rates = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            rates[name] = float(value)
        except ValueError:
            raise CurvesError(f"--rate takes NAME=IMAGES_PER_S, got {pair!r}") from None
        if name not in {run.name for run in runs} or rates[name] <= 0:
            raise CurvesError(f"--rate {pair!r}: no run named {name!r} among the runs given, or not a positive rate")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.studies.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (trained with --metrics-every)")
    parser.add_argument("--out", type=Path, required=True, help="folder for curves.md and curves.png")
    parser.add_argument("--rate", action="append", default=[], metavar="NAME=IMAGES_PER_S",
                        help="a run's quiet-machine training throughput (images per second per the CPU time it used)")
    args = parser.parse_args(argv)
    try:
        rates = parse_rates(args.rate, args.runs)
        curves = {run.name: curve(run, rates.get(run.name)) for run in args.runs}
        args.out.mkdir(parents=True, exist_ok=True)
        samples = draw_samples(args.runs, curves, args.out / "samples.png")
    except (CurvesError, OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = ["# FID against images and CPU-hours", "",
             "CPU-hours: " + "; ".join(f"{name}: {'images at ' + format(rates[name], 'g') + ' img/s' if name in rates else 'recorded time'}"
                                       for name in curves), ""]
    for name, points in curves.items():
        lines += table(name, points)
    (args.out / "curves.md").write_text("\n".join(lines) + "\n")
    plot(curves, args.out / "curves.png")
    if samples is None:  # an earlier call's picture would show other runs
        (args.out / "samples.png").unlink(missing_ok=True)
    print("\n".join(lines))
    print(f"wrote {args.out / 'curves.md'}, {args.out / 'curves.png'}" + (f" and {samples}" if samples else " (no sample grids)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
