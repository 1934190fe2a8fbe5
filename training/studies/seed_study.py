"""One ablation study repeated over seeds: each metric as the mean ± sd across seeds.

    python -m training.studies.seed_study runs/equal-seed0 runs/equal-seed1 runs/equal-seed2 --out training/results/equal-3seeds

Each argument is a folder written by `python -m training.studies.ablation` (same variants and flags, only
--seed differs). Several folders of one seed, each with its own --variants and otherwise the same
flags, count as one study of all their variants: a candidate trained later joins the baselines'
seeds without retraining them (`runs/equal-seed0 runs/candidate-seed0 ...`). A GAN's result moves
with its seed by more than one evaluation's own uncertainty, so a comparison between variants is only drawn from the spread across seeds (at least 3).

Writes into --out: seeds.md (the tables below), seeds.json (every figure), seeds.png (metrics against
kimg, one line per seed, a colour per variant). The tables:
- each metric at each run's last scored epoch, at the last epoch every run reached (equal
  images) and at the training time every run reached (equal CPU time, for variants that differ in
  speed, e.g. width): mean ± sd across seeds, with the training minutes; the seeds' own values of FID;
- the paper's Table 1 shape: DR (1 - detector ratio) per scored epoch, mean ± sd across seeds;
- whether the ranking metric (FID) got worse over the second half of each run, per seed;
- the verdict: the first variant (or the first of --variants) against each other, on FID, separated
  only when the difference of the means exceeds the sum of their standard deviations; and paired by
  seed (runs of one seed share initial weights, data order and latents, so the seed's own effect largely
  cancels in their difference): separated when a paired t-test gives p < 0.05.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import scipy.stats

from training.studies.ablation import RANKING_METRIC, STUDY_FILE, collect, distortion, mean_sd
from training.config import ABLATIONS, BEFORE_THE_FIELDS, TrainConfig
from training.metrics.face_quality import METRIC_NAMES

LOWER_IS_BETTER = {"fid", "kid", "swd", "dr"}  # the rest (precision, recall, ratios to real) are better higher
TABLE_METRICS = ("fid", "kid", "precision", "recall", "swd", "sharpness", "diversity", "dr")
PAIRED_METRICS = ("precision", "recall", "sharpness", "dr")  # judged beside FID, each on its own (FID ranks)


def load_study(study_dir: Path) -> dict:
    """{"seed", "variants": {variant: {epoch: {"kimg", "train_min", metric: value}}}, "images_per_s": {variant: median}}."""
    options_path = study_dir / STUDY_FILE
    if not options_path.is_file():
        raise SystemExit(f"error: {study_dir} is not an ablation study (no {STUDY_FILE})")
    options = with_cpu_precision(study_dir, json.loads(options_path.read_text()))
    runs = collect(study_dir, options)
    variants = {}
    for variant, run in runs.items():
        # Training minutes up to each epoch: a --minutes budget ends a run at the end of the epoch that
        # spends it, so runs of one budget differ by up to an epoch; the tables show the minutes.
        epochs = sorted(run["stats"])
        minutes = dict(zip(epochs, np.cumsum([run["stats"][e]["seconds"] for e in epochs]) / 60))
        variants[variant] = {epoch: {"kimg": record["kimg"], "train_min": minutes.get(epoch), **metric_values(record["metrics"])}
                             for epoch, record in run["metrics"].items()}
    return {"dir": str(study_dir), "seed": options["seed"], "options": options, "variants": variants,
            "images_per_s": {variant: run["images_per_s"] for variant, run in runs.items()}}


CPU_PRECISION_FLAGS = ("--cpu-amp", "--no-cpu-amp")


def trained_in_bf16(run: dict) -> bool:
    """Whether a run (its options.json) trained in bf16 on the CPU: as its first sitting recorded it
    (run.bf16: asked for and native), else as asked (cpu_amp); runs older than the field trained fp32."""
    info = run.get("run") or {}
    return bool(info["bf16"]) if "bf16" in info else bool(run.get("cpu_amp", BEFORE_THE_FIELDS["cpu_amp"]))


def with_cpu_precision(study_dir: Path, options: dict) -> dict:
    """The study's options with its CPU precision (cpu_amp) as its runs trained in, instead of as spelled in
    its flags (the variants that set it themselves, sagan-bf16, aside). So a study that trains fp32 today
    joins the seeds of runs made before the field or under another default; runs of one study that
    trained in different precisions are refused."""
    train_args = options.get("train_args", [])
    given = [arg for arg in train_args if arg in CPU_PRECISION_FLAGS]
    runs = {path.parent.name: json.loads(path.read_text()) for path in sorted(study_dir.glob("*/options.json"))}
    trained = {trained_in_bf16(run) for variant, run in runs.items() if "cpu_amp" not in ABLATIONS.get(variant, {})}
    if len(trained) > 1:
        raise SystemExit(f"error: the runs of {study_dir} trained in different CPU precisions (bf16 and fp32): "
                         "they are not one study")
    if trained:
        cpu_amp = trained.pop()
    else:  # every variant sets its own precision: the study's flags, else today's default
        cpu_amp = given[-1] == "--cpu-amp" if given else TrainConfig().cpu_amp
    return {**options, "train_args": [arg for arg in train_args if arg not in CPU_PRECISION_FLAGS], "cpu_amp": cpu_amp}


def metric_values(entries: dict) -> dict:
    """{metric: value or None} of one scored epoch, with DR (1 - detector ratio) as "dr"."""
    values = {name: entries.get(name, {}).get("value") for name in METRIC_NAMES if name in entries}
    dr = distortion(entries.get("detector"))
    values["dr"] = None if dr is None else dr.get("value")
    return values


# What a study may differ in and still join another: its seed and variants, and when it scored (scoring draws
# its own seeded faces and leaves training as it is; the comparisons take the epochs and times every run has).
NOT_COMPARED = ("seed", "variants", "command", "started", "metrics_every", "metrics_last")


def study_flags(study: dict) -> dict:
    """The options that must match for runs to differ only by their seed (and variant)."""
    return {k: v for k, v in study["options"].items() if k not in NOT_COMPARED}


def differing_flags(study: dict, other: dict) -> list[str]:
    first, second = study_flags(study), study_flags(other)
    return sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))


def merge_by_seed(studies: list[dict]) -> list[dict]:
    """Studies of one seed as one study of all their variants, so a variant added later (its own
    study, same flags) joins the comparison; a variant twice in one seed is refused."""
    merged: dict[int, dict] = {}
    for study in studies:
        into = merged.get(study["seed"])
        if into is None:
            merged[study["seed"]] = {**study, "variants": dict(study["variants"]), "images_per_s": dict(study["images_per_s"]),
                                     "options": {**study["options"], "variants": list(study["options"]["variants"])},
                                     "commands": [study["options"]["command"]]}
            continue
        differing = differing_flags(into, study)
        if differing:
            raise SystemExit(f"error: {study['dir']} differs from {into['dir']} in more than the seed: {', '.join(differing)}")
        repeated = sorted(set(into["variants"]) & set(study["variants"]))
        if repeated:
            raise SystemExit(f"error: the studies repeat a seed ({study['seed']}) with the same variants ({', '.join(repeated)}): "
                             "each run must have its own seed")
        into["variants"].update(study["variants"])
        into["images_per_s"].update(study["images_per_s"])
        into["options"]["variants"] += study["options"]["variants"]
        into["commands"].append(study["options"]["command"])
        into["dir"] += f" + {study['dir']}"
    return list(merged.values())


def check_comparable(studies: list[dict]) -> None:
    """Same variants and flags for every seed: otherwise the spread is not the seeds'."""
    for study in studies[1:]:
        differing = differing_flags(studies[0], study)
        if sorted(study["variants"]) != sorted(studies[0]["variants"]):
            differing.append("variants")
        if differing:
            raise SystemExit(f"error: {study['dir']} differs from {studies[0]['dir']} in more than the seed: {', '.join(differing)}")


def select_variants(studies: list[dict], names: list[str]) -> list[dict]:
    """Only the variants `names`, in that order: the first is the one every verdict compares against. Every
    seed must have them all."""
    for study in studies:
        if not names or any(name not in study["variants"] for name in names):
            raise SystemExit(f"error: --variants {','.join(names)}: {study['dir']} (seed {study['seed']}) has "
                             f"{', '.join(study['variants'])}")
    return [{**study, "variants": {name: study["variants"][name] for name in names},
             "images_per_s": {name: study["images_per_s"][name] for name in names},
             "options": {**study["options"], "variants": list(names)}} for study in studies]


def at_epoch(study: dict, variant: str, epoch: int | None = None) -> dict:
    """The scored epoch `epoch` of a run (default its last), {} when it has none."""
    runs = study["variants"][variant]
    if epoch is not None:
        return runs.get(epoch, {})
    return runs[max(runs)] if runs else {}


def at_minutes(study: dict, variant: str, minutes: float) -> dict:
    """A run's figures after `minutes` of training, interpolated linearly between the scored epochs either
    side ({} outside the scored time): runs of unequal speed score on different time grids."""
    timed = sorted((r for r in study["variants"][variant].values() if r.get("train_min") is not None), key=lambda r: r["train_min"])
    if len(timed) == 1 and timed[0]["train_min"] == minutes:
        return dict(timed[0])
    for before, after in zip(timed, timed[1:]):
        if before["train_min"] <= minutes <= after["train_min"]:
            share = (minutes - before["train_min"]) / (after["train_min"] - before["train_min"])
            return {name: None if before.get(name) is None or after.get(name) is None else before[name] + share * (after[name] - before[name])
                    for name in before}
    return {}


def common_minutes(studies: list[dict], variants: list[str]) -> float | None:
    """The training time every run reached: the shortest run's minutes at its last scored epoch."""
    lasts = [at_epoch(study, variant).get("train_min") for study in studies for variant in variants]
    return None if None in lasts or not lasts else min(lasts)


def common_epoch(studies: list[dict], variants: list[str]) -> int | None:
    """The last epoch every run scored: equal images for every variant and seed."""
    scored = [set(study["variants"][variant]) for study in studies for variant in variants]
    return max(set.intersection(*scored), default=None) if scored else None


def final_table(studies: list[dict], variants: list[str], pick=at_epoch) -> list[str]:
    """Every metric, mean ± sd across seeds, of the scored epoch pick(study, variant) (default the last)."""
    lines = ["| variant | kimg | train min | train img/s | " + " | ".join(TABLE_METRICS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(TABLE_METRICS)]
    for variant in variants:
        finals = [pick(study, variant) for study in studies]
        speeds = [study["images_per_s"][variant] for study in studies]
        lines.append(f"| {variant} | {mean_sd([f.get('kimg') for f in finals])} | {mean_sd([f.get('train_min') for f in finals])} | {mean_sd(speeds)} | "
                     + " | ".join(mean_sd([f.get(name) for f in finals]) for name in TABLE_METRICS) + " |")
    return lines


def per_seed_table(studies: list[dict], variants: list[str], figure, style: str = ".4g") -> list[str]:
    """A row per variant, a column per seed: figure(study, variant), formatted with `style` ("–" for None)."""
    lines = ["| variant | " + " | ".join(f"seed {study['seed']}" for study in studies) + " |", "|---|" + "---:|" * len(studies)]
    for variant in variants:
        cells = [figure(study, variant) for study in studies]
        lines.append(f"| {variant} | " + " | ".join("–" if v is None else format(v, style) for v in cells) + " |")
    return lines


def dr_table(studies: list[dict], variants: list[str]) -> list[str]:
    """The paper's Table 1 shape: DR per scored epoch (rows), variant (columns), mean ± sd across seeds."""
    epochs = sorted({epoch for study in studies for variant in variants for epoch in study["variants"][variant]})
    lines = ["| epoch | " + " | ".join(f"{variant} DR" for variant in variants) + " |", "|---:|" + "---:|" * len(variants)]
    for epoch in epochs:
        lines.append(f"| {epoch} | " + " | ".join(
            mean_sd([study["variants"][variant].get(epoch, {}).get("dr") for study in studies]) for variant in variants) + " |")
    return lines


def second_half_trend(study: dict, variant: str, name: str = RANKING_METRIC) -> float | None:
    """The metric at the last scored epoch minus its value at the scored epoch nearest half the run's kimg
    (positive FID: worse over the second half)."""
    runs = study["variants"][variant]
    scored = [(r["kimg"], r.get(name)) for _, r in sorted(runs.items()) if r.get(name) is not None]
    if len(scored) < 2:
        return None
    middle = min(scored[:-1], key=lambda kv: abs(kv[0] - scored[-1][0] / 2))
    return scored[-1][1] - middle[1]


def verdict(studies: list[dict], variants: list[str], name: str = RANKING_METRIC, pick=at_epoch) -> list[str]:
    """The first variant against each other on `name` at the scored epoch pick(study, variant) (default
    the last): separated when |difference of means| > sd + sd."""
    lines = []
    first = [pick(study, variants[0]).get(name) for study in studies]
    for other in variants[1:]:
        values = [pick(study, other).get(name) for study in studies]
        if None in first or None in values or len(studies) < 2:
            lines.append(f"- {variants[0]} against {other}: needs {name} from at least 2 seeds of each")
            continue
        difference = np.mean(first) - np.mean(values)
        spread = np.std(first, ddof=1) + np.std(values, ddof=1)
        better = variants[0] if (difference < 0) == (name in LOWER_IS_BETTER) else other
        lines.append(f"- {variants[0]} {name} {mean_sd(first)} against {other} {mean_sd(values)}: difference {difference:+.4g}, "
                     f"sum of the sds {spread:.2g} → " + (f"**{better} is better, beyond the seeds' spread**" if abs(difference) > spread
                                                          else "**not separated**: the difference is within the seeds' spread"))
        lines.append(paired_by_seed(first, values, better))
    return lines


def paired_by_seed(first: list[float], values: list[float], better: str, alpha: float = 0.05) -> str:
    """The verdict's second line: the per-seed differences and a two-sided paired t-test on them.
    `better` is the variant the means favour (the mean of the differences has the same sign)."""
    differences = np.subtract(first, values)
    if np.all(differences == differences[0]):  # no spread: the test is undefined, the sign is the answer
        p_value = 0.0 if differences[0] != 0 else 1.0
    else:
        p_value = float(scipy.stats.ttest_rel(first, values).pvalue)
    each = ", ".join(f"{d:+.3g}" for d in differences)
    return (f"  - paired by seed: differences {each} (mean {mean_sd(list(differences))}), paired t-test p = {p_value:.2g} → "
            + (f"**{better} is better (p < {alpha:g})**" if p_value < alpha else f"**not separated** (p ≥ {alpha:g})"))


def plot(studies: list[dict], variants: list[str], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in ("fid", "precision", "sharpness", "diversity", "dr")
             if any(r.get(name) is not None for s in studies for v in variants for r in s["variants"][v].values())]
    if not names:
        return None
    # FID against training minutes too: variants that train at different speeds compare per CPU-hour there
    panels = [(name, "kimg") for name in names] + ([("fid", "train_min")] if "fid" in names else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (name, x) in zip(axes[0], panels):
        for colour, variant in zip(colours, variants):
            for index, study in enumerate(studies):
                points = [(r[x], r[name]) for _, r in sorted(study["variants"][variant].items())
                          if r.get(name) is not None and r.get(x) is not None]
                if points:
                    axis.plot(*zip(*points), color=colour, alpha=0.8, marker="o", markersize=3, linewidth=1,
                              label=variant if index == 0 else None)
        axis.set_title(name + (" ↓" if name in LOWER_IS_BETTER else " ↑") + (" per training time" if x == "train_min" else ""))
        axis.set_xlabel({"kimg": "kimg", "train_min": "training minutes"}[x])
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"one line per seed ({', '.join(str(s['seed']) for s in studies)})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison(studies: list[dict], variants: list[str], pick, at: str, meaning: str, verdict_at: str | None = None) -> list[str]:
    """A report section: every metric at the point pick(study, variant) selects, and the verdict there."""
    return [f"## Every metric at {at}, {meaning}, mean ± sd across seeds", "", *final_table(studies, variants, pick), "",
            f"Verdict at {verdict_at or at}:", "", *verdict(studies, variants, pick=pick), ""]


def write(studies: list[dict], out: Path) -> Path:
    variants = studies[0]["options"]["variants"]
    out.mkdir(parents=True, exist_ok=True)
    picture = plot(studies, variants, out / "seeds.png")
    options = studies[0]["options"]
    lines = [f"# {', '.join(variants)} over {len(studies)} seeds", "",
             "Studies: " + ", ".join(f"`{s['dir']}` (seed {s['seed']})" for s in studies) + ".", "",
             "Each seed ran " + " and ".join(f"`{command}`" for command in studies[0]["commands"]) + " with its own --seed."
             f" Figures at each run's last scored epoch, "
             f"{options['metrics_count']} G-EMA faces against as many held-out real faces; ± is the standard deviation "
             "across seeds (not one evaluation's uncertainty). DR = 1 − detector ratio (lower is better).", "",
             "## Every metric at the last scored epoch, mean ± sd across seeds", "",
             "A --minutes budget ends a run at the end of the epoch that spends it, so the train minutes differ a little.", "",
             *final_table(studies, variants), "",
             f"## {RANKING_METRIC.upper()} of each seed at its last scored epoch", "", *per_seed_table(studies, variants, lambda study, variant: at_epoch(study, variant).get(RANKING_METRIC)), "",
             "## Verdict at the last scored epoch", "", *verdict(studies, variants), "",
             "## The other metrics at the last scored epoch, each judged as FID is", "",
             *(line for name in PAIRED_METRICS for line in verdict(studies, variants, name=name)), ""]
    epoch = common_epoch(studies, variants)
    if epoch is not None:
        lines += comparison(studies, variants, functools.partial(at_epoch, epoch=epoch), f"epoch {epoch}",
                            "the last that every run reached (equal images)")
    minutes = common_minutes(studies, variants)
    if minutes is not None:
        lines += comparison(studies, variants, functools.partial(at_minutes, minutes=minutes), f"{minutes:.1f} training minutes",
                            "the time every run reached (equal CPU time; interpolated linearly between the scored epochs either side)",
                            f"{minutes:.1f} minutes")
    lines += [f"## {RANKING_METRIC.upper()} over the second half of each run (last − at half the kimg; > 0: got worse)", "",
              *per_seed_table(studies, variants, second_half_trend, "+.4g"), "",
              "## DR per scored epoch, mean ± sd across seeds (the shape of the paper's Table 1)", "", *dr_table(studies, variants), ""]
    if picture:
        lines += ["## Metrics against kimg", "", f"![metrics against kimg, one line per seed]({picture.name})", ""]
    report = out / "seeds.md"
    report.write_text("\n".join(lines))
    (out / "seeds.json").write_text(json.dumps({"studies": studies}, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.studies.seed_study", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path,
                        help="ablation study folders: one per seed, or several per seed that add variants with the same flags")
    parser.add_argument("--out", type=Path, required=True, help="folder for seeds.md, seeds.json, seeds.png")
    parser.add_argument("--variants", help="comma-separated: report only these, the first as the reference of the verdicts "
                                           "(default all, in the studies' order)")
    args = parser.parse_args(argv)
    studies = merge_by_seed([load_study(path) for path in args.studies])
    if args.variants:  # first: a seed may hold more variants than the ones compared
        studies = select_variants(studies, args.variants.split(","))
    check_comparable(studies)
    print(f"report: {write(studies, args.out)}")


if __name__ == "__main__":
    main()
