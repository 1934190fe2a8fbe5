"""The ablation study: every variant trained alike by the real trainer, a report rebuilt from the runs,
an interrupted study continued without retraining what finished, other options refused."""

import dataclasses
import functools
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from training.studies.ablation import (LATEST, final_table, main, parse_args, plot_metrics, ranked, read_jsonl, replay_start,
                                      seed_rows, stop_epochs, study_options, train_config)
from training.checkpoint import generator_from_checkpoint, load_checkpoint
from training.config import TrainConfig
from training.constants import Z_DIM
from training.data.images import to_uint8_nhwc
from training.latents import seeds_to_latents

VARIANTS = ["bamsgan", "dcgan"]  # the full model and the cheapest ablation: blur, memory and attention all differ
TINY = ["--channels", "4", "--synthetic-size", "32", "--batch-size", "16", "--sample-seeds", "4", "--threads", "1",
        "--memory-fill-epoch", "0", "--memory-replay-epoch", "1", "--memory-capacity", "16"]


def study_argv(out, *extra):
    return ["--out", str(out), "--epochs", "2", "--variants", ",".join(VARIANTS), "--metrics-every", "1", "--metrics-last", "2",
            "--metrics-count", "16", "--grid-seeds", "3", *TINY, *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One decoded-data and metrics cache for the module (BAMSGAN_CACHE reaches the training subprocesses)."""
    path, before = tmp_path_factory.mktemp("cache"), os.environ.get("BAMSGAN_CACHE")
    os.environ["BAMSGAN_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("BAMSGAN_CACHE")
    else:
        os.environ["BAMSGAN_CACHE"] = before


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("ablation") / "study"
    main(study_argv(out))
    return out


@pytest.fixture(scope="module")
def study_seed1(tmp_path_factory, cache):
    """The same study with --seed 1."""
    out = tmp_path_factory.mktemp("ablation") / "seed1"
    main(study_argv(out, "--seed", "1"))
    return out


def test_stop_epochs_score_each_of_the_last_epochs():
    # The trainer scores every K-th epoch and the last epoch of a run; the study stops the run where K would skip.
    assert stop_epochs(TrainConfig(epochs=12, metrics_every=3), 4) == [10, 11, 12]
    assert stop_epochs(TrainConfig(epochs=12, metrics_every=1), 4) == [12]
    assert stop_epochs(TrainConfig(epochs=12, metrics_every=5), 0) == [12]


def test_every_variant_trained_alike_and_reported(study):
    options = {variant: json.loads((study / variant / "options.json").read_text()) for variant in VARIANTS}
    for key in ("data", "seed", "preset", "channels", "batch_size", "metrics_count", "metrics_every"):
        assert options["bamsgan"][key] == options["dcgan"][key], key
    assert (options["bamsgan"]["blur"], options["bamsgan"]["memory"], options["bamsgan"]["attention"]) == (True, True, True)
    assert (options["dcgan"]["blur"], options["dcgan"]["memory"], options["dcgan"]["attention"]) == (False, False, False)

    report = (study / "ablation.md").read_text()
    results = json.loads((study / "results.json").read_text())
    for variant in VARIANTS:
        assert list(read_jsonl(study / variant / "stats.jsonl")) == [1, 2]
        metrics = read_jsonl(study / variant / "metrics.jsonl")
        assert list(metrics) == [1, 2] and all(record["n"] == 16 for record in metrics.values())
        swd = metrics[2]["metrics"]["swd"]
        # fid, kid, precision, recall: n/a at 16 faces (FID needs 100), so the rows keep the study's order
        assert f"| {variant} | 2 | n/a | n/a | n/a | n/a | {swd['value']:.4g} ± {swd['uncertainty']:.2g} |" in report
        swds = [metrics[epoch]["metrics"]["swd"]["value"] for epoch in (1, 2)]  # the mean over the last 2 epochs
        assert f"| {variant} | 1–2 (2) | {np.mean(swds):.4g} ± {np.std(swds, ddof=1):.2g} |" in report
        assert results["variants"][variant]["metrics"]["2"] == metrics[2]["metrics"]
        assert results["variants"][variant]["epochs_done"] == 2
    detector = read_jsonl(study / "bamsgan" / "metrics.jsonl")[1]["metrics"]["detector"]
    if detector["value"] is not None:  # the detector file is in ../shared/models
        assert "shape of the paper's Table 1" in report and "| mean ± sd over epochs |" in report
        assert f"| 1 | {1 - detector['value']:.4g} ± {detector['uncertainty']:.2g} |" in report
    else:
        assert detector["unavailable"] and "| bamsgan | 2 |" in report

    assert Image.open(study / "metrics.png").size[0] > 400
    assert Image.open(study / "grid.png").size[1] >= 2 * 2 * 64  # two rows at two screen pixels per image pixel
    assert "![" in report and "(metrics.png)" in report and "(grid.png)" in report
    assert "No FID on record" in report and "too few for FID" in report
    assert json.loads((study / "study.json").read_text())["epochs"] == 2


def test_grid_rows_are_the_same_seeds_through_each_final_generator(study):
    faces, labels = seed_rows(study, VARIANTS, 3)
    assert faces.shape == (6, 64, 64, 3) and labels == ["bamsgan\nepoch 2", "dcgan\nepoch 2"]
    for row, variant in enumerate(VARIANTS):
        generator = generator_from_checkpoint(load_checkpoint(study / variant / LATEST))
        with torch.no_grad():
            expected = to_uint8_nhwc(generator(torch.from_numpy(seeds_to_latents(np.arange(3), Z_DIM)))).numpy()
        assert np.array_equal(faces[3 * row : 3 * row + 3], expected)
    assert not np.array_equal(faces[:3], faces[3:])


def test_interrupted_study_continues_without_retraining(study, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    for name in ("ablation.md", "results.json", "metrics.png", "grid.png"):
        (copy / name).unlink()
    finished = {name: (copy / "bamsgan" / name).read_bytes() for name in ("stats.jsonl", "metrics.jsonl", LATEST)}
    latest_time = (copy / "bamsgan" / LATEST).stat().st_mtime_ns
    # dcgan stopped after epoch 1: its latest checkpoint is epoch 1's (the logs ran ahead; the trainer trims them).
    shutil.copy(copy / "dcgan" / "checkpoints" / "epoch-0001.pt", copy / "dcgan" / LATEST)

    main(["--out", str(copy)])  # the study's own options come from study.json
    out = capsys.readouterr().out
    assert "bamsgan: finished (2 epochs), skipped" in out and "dcgan: resuming at epoch 1" in out
    assert {name: (copy / "bamsgan" / name).read_bytes() for name in finished} == finished
    assert (copy / "bamsgan" / LATEST).stat().st_mtime_ns == latest_time
    assert list(read_jsonl(copy / "dcgan" / "stats.jsonl")) == [1, 2]
    assert list(read_jsonl(copy / "dcgan" / "metrics.jsonl")) == [1, 2]
    assert len((copy / "dcgan" / "stats.jsonl").read_text().splitlines()) == 2
    # On CPU a resumed run is the uninterrupted run: the same final weights.
    resumed, straight = load_checkpoint(copy / "dcgan" / LATEST), load_checkpoint(study / "dcgan" / LATEST)
    assert resumed["epoch"] == 2
    for name, tensor in straight["G_ema"].items():
        assert torch.equal(resumed["G_ema"][name], tensor), name
    assert (copy / "ablation.md").is_file() and (copy / "grid.png").is_file()

    # dcgan stopped before its first checkpoint: its folder is started again, bamsgan still untouched.
    for path in [copy / "dcgan" / LATEST, *(copy / "dcgan" / "checkpoints").iterdir()]:
        path.unlink()
    main(study_argv(copy))
    assert "has no checkpoint yet; starting it again" in capsys.readouterr().out and load_checkpoint(copy / "dcgan" / LATEST)["epoch"] == 2
    assert {name: (copy / "bamsgan" / name).read_bytes() for name in finished} == finished
    assert list(read_jsonl(copy / "dcgan" / "stats.jsonl")) == [1, 2]


def test_other_options_and_bad_input_are_refused(study, tmp_path, capsys):
    saved = (study / "study.json").read_bytes()
    with pytest.raises(SystemExit, match=r"is a study with epochs=2, not 3; continue it with its own options"):
        main(study_argv(study, "--epochs", "3"))
    with pytest.raises(SystemExit, match=r"is a study with train_args="):
        main([*study_argv(study), "--channels", "8"])
    with pytest.raises(SystemExit, match=r"is a study with metrics_data=None, not 'synthetic'"):
        main(study_argv(study, "--metrics-data", "synthetic"))
    assert (study / "study.json").read_bytes() == saved

    not_a_study = tmp_path / "mine"
    not_a_study.mkdir()
    (not_a_study / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not an ablation study"):
        main(study_argv(not_a_study))
    assert sorted(p.name for p in not_a_study.iterdir()) == ["notes.txt"]

    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit, match="--variants must name distinct variants"):
        main(["--out", str(fresh), "--variants", "bamsgan,wgan"])
    with pytest.raises(SystemExit, match="--resume is set by the study itself"):
        main(["--out", str(fresh), "--resume"])
    with pytest.raises(SystemExit, match="--metrics-last must be between 0 and --epochs"):
        main(["--out", str(fresh), "--epochs", "2", "--metrics-last", "3"])
    with pytest.raises(SystemExit):  # the trainer's own check, before anything is trained
        main(["--out", str(fresh), "--channels", "0"])
    assert "channels must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not an ablation study"):
        main(["--out", str(fresh), "--report-only"])
    assert not fresh.exists()


def test_variants_are_ranked_by_fid_and_metrics_png_plots_it(tmp_path):
    def run(fids):  # a run's metrics.jsonl records by epoch, as collect() reads them
        metrics = {epoch: {"metrics": {"fid": {"value": fid, "uncertainty": 1.0}, "swd": {"value": 10.0, "uncertainty": 0.5}}}
                   for epoch, fid in enumerate(fids, 1)}
        return {"metrics": metrics, "images_per_s": 100.0, "wall_seconds": 60.0}

    runs = {"bamsgan": run([90.0, 80.0]), "sagan": run([95.0, 60.0]), "dcgan": {"metrics": {}, "images_per_s": None, "wall_seconds": 0},
            "blur": run([70.0, None])}
    assert list(ranked(runs)) == ["sagan", "bamsgan", "dcgan", "blur"]  # by the last epoch's FID; none: last, in study order
    rows = final_table(runs, ["fid", "swd"])[2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["sagan", "bamsgan", "dcgan", "blur"]
    assert rows[0].startswith("| sagan | 2 | 60 ± 1 |")
    from PIL import Image

    path = plot_metrics({name: runs[name] for name in ("bamsgan", "sagan")}, ["fid"], tmp_path / "metrics.png")
    assert path is not None and Image.open(path).size[0] > 300


def test_seed_study_reports_mean_and_spread_across_real_studies(study, study_seed1, tmp_path):
    """training.studies.seed_study over two real studies that differ only by --seed: tables, verdict and plot."""
    from training.studies import seed_study

    second = study_seed1
    seed_study.main([str(study), str(second), "--out", str(tmp_path / "seeds")])
    report = (tmp_path / "seeds" / "seeds.md").read_text()
    figures = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert [s["seed"] for s in figures["studies"]] == [0, 1]
    finals = [read_jsonl(path / "bamsgan" / "metrics.jsonl")[2]["metrics"]["swd"]["value"] for path in (study, second)]
    row = next(line for line in report.splitlines() if line.startswith("| bamsgan | "))
    swd_column = seed_study.TABLE_METRICS.index("swd") + 4  # variant, kimg, img/s, then the metrics
    assert row.split(" | ")[swd_column] == f"{np.mean(finals):.4g} ± {np.std(finals, ddof=1):.2g}"
    assert "## Verdict" in report and "bamsgan" in report.split("## Verdict")[1]
    others = report.split("## The other metrics at the last scored epoch")[1].split("\n## ")[0]
    first, pairs = figures["studies"][0]["options"]["variants"][0], len(figures["studies"][0]["variants"]) - 1
    verdicts = [line for line in others.splitlines() if line.startswith(f"- {first} ")]
    assert len(verdicts) == len(seed_study.PAIRED_METRICS) * pairs  # each metric against each other variant
    for name in seed_study.PAIRED_METRICS:  # its means and paired test, or why it has none (tiny runs lack some)
        assert sum(f"needs {name} " in line or f"{first} {name} " in line for line in verdicts) == pairs
    assert others.count("paired by seed:") == sum("needs " not in line for line in verdicts)
    assert "(equal CPU time; interpolated" in report and "Verdict at" in report
    assert Image.open(tmp_path / "seeds" / "seeds.png").size[0] > 300


def test_seed_study_joins_a_variant_trained_later_to_its_seed(study, study_seed1, tmp_path):
    """Each variant of seed 0 in a study of its own (same flags): the same report as the one study."""
    from training.studies import seed_study

    second = study_seed1
    variants = json.loads((study / "study.json").read_text())["variants"]
    parts = []
    for variant in variants:
        part = tmp_path / f"seed0-{variant}"
        shutil.copytree(study, part)
        for other in set(variants) - {variant}:
            shutil.rmtree(part / other)
        options = json.loads((part / "study.json").read_text())
        (part / "study.json").write_text(json.dumps({**options, "variants": [variant]}))
        parts.append(part)
    seed_study.main([str(study), str(second), "--out", str(tmp_path / "whole")])
    seed_study.main([*map(str, parts), str(second), "--out", str(tmp_path / "joined")])

    def tables(folder):
        return [line for line in (folder / "seeds.md").read_text().splitlines() if line.startswith("|")]

    assert tables(tmp_path / "joined") == tables(tmp_path / "whole")
    chosen = variants[::-1][:2]  # two of them, the other way round: the verdict is against the first
    seed_study.main([*map(str, parts), str(second), "--out", str(tmp_path / "chosen"), "--variants", ",".join(chosen)])
    rows = [line.split(" | ")[0][2:] for line in tables(tmp_path / "chosen")[2:2 + len(chosen)]]
    assert rows == chosen and f"\n- {chosen[0]} " in (tmp_path / "chosen" / "seeds.md").read_text()  # the verdicts are against it
    with pytest.raises(SystemExit, match="--variants nope: .* .seed 0. has"):
        seed_study.main([str(study), str(second), "--out", str(tmp_path / "out"), "--variants", "nope"])
    with pytest.raises(SystemExit, match="repeat a seed .0. with the same variants"):
        seed_study.main([str(study), str(parts[0]), str(second), "--out", str(tmp_path / "out")])
    lone_seed1 = tmp_path / "seed1-one-variant"  # seed 1 without the other variants
    shutil.copytree(parts[0], lone_seed1)
    (lone_seed1 / "study.json").write_text(json.dumps({**json.loads((parts[0] / "study.json").read_text()), "seed": 1}))
    with pytest.raises(SystemExit, match="in more than the seed: variants"):
        seed_study.main([str(study), str(lone_seed1), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=f"--variants {variants[0]},{variants[1]}: .* .seed 1. has {variants[0]}$"):
        seed_study.main([str(study), str(lone_seed1), "--out", str(tmp_path / "out"), "--variants", f"{variants[0]},{variants[1]}"])
    assert not (tmp_path / "out").exists()
    seed_study.main([str(study), str(lone_seed1), "--out", str(tmp_path / "the-one-both-have"), "--variants", variants[0]])
    assert (tmp_path / "the-one-both-have" / "seeds.md").is_file()  # a seed may hold variants the comparison leaves out


def test_seed_study_refuses_studies_that_differ_in_more_than_the_seed(study, tmp_path, capsys):
    from training.studies import seed_study

    other = tmp_path / "other"
    shutil.copytree(study, other)
    options = json.loads((other / "study.json").read_text())
    (other / "study.json").write_text(json.dumps({**options, "seed": 7, "metrics_count": 99}))
    with pytest.raises(SystemExit, match="differs from .* in more than the seed: metrics_count"):
        seed_study.main([str(study), str(other), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="repeat a seed"):
        seed_study.main([str(study), str(study), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not an ablation study"):
        seed_study.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written when the inputs are refused


def test_seed_study_compares_the_cpu_precision_runs_trained_in_not_its_spelling(study, tmp_path):
    # Runs saved before the cpu_amp field trained in fp32: a study whose runs recorded fp32 joins their
    # seeds whether it said --no-cpu-amp or took the default; one whose runs asked for bf16 is refused.
    from training.studies import seed_study

    def copy(name, seed, train_args=None, cpu_amp=None, before_the_field=False):
        out = tmp_path / name
        shutil.copytree(study, out)
        options = json.loads((out / "study.json").read_text())
        (out / "study.json").write_text(json.dumps({**options, "seed": seed, "train_args": train_args or options["train_args"]}))
        for path in out.glob("*/options.json"):
            run = json.loads(path.read_text())
            if before_the_field:
                run = {**{k: v for k, v in run.items() if k != "cpu_amp"}, "run": {k: v for k, v in run["run"].items() if k != "bf16"}}
            if cpu_amp is not None:  # as asked, and as trained (a CPU with native bf16)
                run = {**run, "cpu_amp": cpu_amp, "run": {**run["run"], "bf16": cpu_amp}}
            path.write_text(json.dumps(run))
        return out

    options = json.loads((study / "study.json").read_text())
    older = copy("older", 7, before_the_field=True)
    fp32 = copy("fp32", 8, train_args=[*options["train_args"], "--no-cpu-amp"], cpu_amp=False)
    bf16 = copy("bf16", 9, train_args=[*options["train_args"], "--cpu-amp"], cpu_amp=True)
    bf16_by_default = copy("bf16-default", 10, cpu_amp=True)  # made when bf16 was the default: no flag, its runs say so
    assert seed_study.load_study(older)["options"]["cpu_amp"] is False and seed_study.load_study(study)["options"]["cpu_amp"] is False
    assert seed_study.load_study(bf16_by_default)["options"]["cpu_amp"] is True
    seed_study.main([str(older), str(fp32), str(study), "--out", str(tmp_path / "joined")])
    assert (tmp_path / "joined" / "seeds.md").is_file()
    seed_study.main([str(bf16), str(bf16_by_default), "--out", str(tmp_path / "joined-bf16")])
    for other in (bf16, bf16_by_default):
        with pytest.raises(SystemExit, match="in more than the seed: cpu_amp"):
            seed_study.main([str(other), str(older), "--out", str(tmp_path / "out")])
    mixed = copy("mixed", 11)  # one variant continued under another default: not one study
    first = sorted(mixed.glob("*/options.json"))[0]
    first.write_text(json.dumps({**json.loads(first.read_text()), "cpu_amp": True, "run": {**json.loads(first.read_text())["run"], "bf16": True}}))
    with pytest.raises(SystemExit, match="trained in different CPU precisions"):
        seed_study.load_study(mixed)


def test_seed_study_joins_studies_scored_on_other_epochs_at_the_epochs_all_scored(study, tmp_path):
    """When a study scored (--metrics-every) does not change its training: studies that differ only in it
    join, and the equal-images comparison takes the last epoch every run scored."""
    from training.studies import seed_study

    sparse = tmp_path / "sparse"
    shutil.copytree(study, sparse)
    options = json.loads((sparse / "study.json").read_text())
    (sparse / "study.json").write_text(json.dumps({**options, "seed": 7, "metrics_every": 2, "metrics_last": 0}))
    assert seed_study.differing_flags(seed_study.load_study(study), seed_study.load_study(sparse)) == []
    seed_study.main([str(study), str(sparse), "--out", str(tmp_path / "joined")])
    assert (tmp_path / "joined" / "seeds.md").is_file()

    def scored(*epochs):
        return {"variants": {"a": {epoch: {"fid": 1.0} for epoch in epochs}}}

    assert seed_study.common_epoch([scored(1, 2, 3, 4, 5), scored(2, 4, 6, 7)], ["a"]) == 4  # not 5: the second never scored it
    assert seed_study.common_epoch([scored(1, 3), scored(2, 4)], ["a"]) is None


def test_seed_study_verdict_needs_the_difference_beyond_the_spread():
    from training.studies.seed_study import verdict

    def study(seed, fids):
        return {"seed": seed, "variants": {v: {1: {"kimg": 10.0, "fid": fid}} for v, fid in fids.items()}}

    apart = [study(s, {"bamsgan": 50 + s, "sagan": 80 + s}) for s in range(3)]
    assert "bamsgan is better, beyond the seeds' spread" in verdict(apart, ["bamsgan", "sagan"])[0]
    overlapping = [study(s, {"bamsgan": 50 + 10 * s, "sagan": 55 + 10 * s}) for s in range(3)]
    assert "not separated" in verdict(overlapping, ["bamsgan", "sagan"])[0]


def test_seed_study_pairs_runs_of_one_seed():
    """The seeds' spread hides a difference that every seed shows alike; pairing by seed finds it,
    and does not find one whose sign changes from seed to seed."""
    from training.studies.seed_study import verdict

    def study(seed, fids):
        return {"seed": seed, "variants": {v: {1: {"kimg": 10.0, "fid": fid}} for v, fid in fids.items()}}

    offsets, shifts = [0, 30, 55], [34, 37, 47]  # the seeds' own offsets; a variant's cost per seed
    consistent = [study(s, {"sagan": 260 + offsets[s], "memory-only": 260 + offsets[s] + shifts[s]}) for s in range(3)]
    unpaired, paired = verdict(consistent, ["sagan", "memory-only"])
    assert "not separated" in unpaired
    assert "differences -34, -37, -47" in paired and "p = 0.0098" in paired and "**sagan is better (p < 0.05)**" in paired
    mixed = [study(s, {"sagan": 260 + offsets[s], "memory-only": 260 + offsets[s] + shift}) for s, shift in enumerate([20, -15, 10])]
    assert "**not separated** (p ≥ 0.05)" in verdict(mixed, ["sagan", "memory-only"])[1]
    alike = [study(s, {"sagan": 100.0 + s, "memory-only": 110.0 + s}) for s in range(3)]  # no spread in the differences
    assert "p = 0 → **sagan is better" in verdict(alike, ["sagan", "memory-only"])[1]


def test_seed_study_compares_variants_of_unequal_speed_at_equal_training_time():
    """A wide model scores every 10 minutes, a narrow one every 5: at the time both reached, the wide
    one's figures are interpolated between its epochs either side, and the verdict reads those."""
    from training.studies.seed_study import at_minutes, common_minutes, verdict

    def study(seed):
        narrow = {epoch: {"kimg": 35.0 * epoch, "train_min": 5.0 * epoch, "fid": 300 - 20 * epoch + seed} for epoch in range(1, 6)}
        wide = {epoch: {"kimg": 35.0 * epoch, "train_min": 10.0 * epoch, "fid": 290 - 40 * epoch + seed} for epoch in range(1, 4)}
        return {"seed": seed, "variants": {"narrow": narrow, "wide": wide}}

    studies = [study(seed) for seed in range(3)]
    assert common_minutes(studies, ["narrow", "wide"]) == 25.0  # the narrow runs' last epoch
    assert at_minutes(studies[0], "narrow", 25.0) == {"kimg": 175.0, "train_min": 25.0, "fid": 200.0}
    assert at_minutes(studies[0], "wide", 25.0) == {"kimg": 87.5, "train_min": 25.0, "fid": 190.0}  # halfway from 210 to 170
    assert at_minutes(studies[0], "wide", 9.0) == {} and at_minutes(studies[0], "wide", 31.0) == {}
    within = functools.partial(at_minutes, minutes=25.0)
    assert "narrow fid 201 ± 1 against wide 191 ± 1" in verdict(studies, ["narrow", "wide"], pick=within)[0]
    studies[1]["variants"]["wide"][3].pop("train_min")
    assert common_minutes(studies, ["narrow", "wide"]) is None  # a run without its minutes: no equal-time table


def test_a_study_ended_by_its_time_budget_says_so_not_unfinished(cache, tmp_path):
    out = tmp_path / "budget"
    main(study_argv(out, "--minutes", "0.0001"))  # the budget is spent after the first epoch
    report = (out / "ablation.md").read_text()
    assert all(max(read_jsonl(out / variant / "stats.jsonl")) == 1 for variant in VARIANTS)
    assert "**Ended by the time budget**" in report and "bamsgan after 1 epochs" in report
    assert "Unfinished" not in report


def test_the_plot_marks_the_memory_replay_where_the_runs_recorded_it(tmp_path):
    # A fork of a run without memory fills the memory after the fork and replays it from the next epoch:
    # the study's flags alone place the replay at the preset's epoch; the run's options.json knows.
    options, train_args = parse_args(["--variants", "memory-only", "--epochs", "43"])
    options = study_options(options, train_args, None)
    from_flags = train_config(options, "memory-only")
    assert replay_start(tmp_path, options) == from_flags.memory_replay_epoch + 1
    (tmp_path / "memory-only").mkdir()
    recorded = {**dataclasses.asdict(from_flags), "memory_fill_epoch": 38, "memory_replay_epoch": 39, "run": {"forked_from": {"epoch": 38}}}
    (tmp_path / "memory-only" / "options.json").write_text(json.dumps(recorded))
    assert replay_start(tmp_path, options) == 40


def test_a_late_training_study_forks_one_checkpoint_into_each_variant(study, cache, tmp_path):
    # The paper's claim is about late training: fork a trained run and switch only the variant.
    parent = study / "bamsgan" / LATEST
    out = tmp_path / "late"
    main(["--out", str(out), "--epochs", "3", "--variants", "bamsgan,sagan,memory-only", "--metrics-every", "1",
          "--metrics-last", "1", "--metrics-count", "16", "--grid-seeds", "3", "--seed", "1", "--fork", str(parent), *TINY])
    for variant, switches in (("bamsgan", (True, True)), ("sagan", (False, False)), ("memory-only", (False, True))):
        options = json.loads((out / variant / "options.json").read_text())
        assert (options["blur"], options["memory"]) == switches and options["seed"] == 1
        assert options["run"]["forked_from"]["epoch"] == 2
        assert sorted(read_jsonl(out / variant / "stats.jsonl")) == [3]  # only what followed the fork
        assert sorted(read_jsonl(out / variant / "metrics.jsonl")) == [3]
    assert "| sagan |" in (out / "ablation.md").read_text()
