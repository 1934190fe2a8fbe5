"""training.studies.curves: FID against images and CPU-hours from the records a run writes."""

from __future__ import annotations

import json

import pytest

from training.studies.curves import curve, last_samples, main, trend


def write_run(run, threads: int, epochs: list[dict], scores: list[dict]) -> None:
    """A run directory's records in the trainer's own format (stats.jsonl, metrics.jsonl, options.json)."""
    run.mkdir(parents=True)
    (run / "options.json").write_text(json.dumps({"run": {"threads": threads, "processes": 1}}))
    (run / "stats.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    (run / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))


def score(epoch: int, kimg: float, fid: float) -> dict:
    return {"epoch": epoch, "step": epoch * 10, "kimg": kimg, "n": 500,
            "metrics": {"fid": {"value": fid, "uncertainty": 1.0}, "precision": {"value": 0.1}, "recall": {"value": None}}}


def test_cpu_hours_from_cpu_seconds_else_wall_seconds_times_threads_else_a_rate(tmp_path):
    write_run(tmp_path / "new", 2, [{"epoch": 1, "seconds": 1800, "cpu_seconds": 3000}, {"epoch": 2, "seconds": 1800, "cpu_seconds": 3000}],
              [score(2, 72.0, 200.0)])
    write_run(tmp_path / "old", 2, [{"epoch": 1, "seconds": 1800}, {"epoch": 2, "seconds": 1800}], [score(1, 36.0, 300.0), score(2, 72.0, 250.0)])
    assert curve(tmp_path / "new")[0]["cpu_hours"] == pytest.approx(6000 / 3600)
    assert [p["cpu_hours"] for p in curve(tmp_path / "old")] == pytest.approx([1.0, 2.0])  # wall x 2 threads
    assert curve(tmp_path / "old", rate=20.0)[1]["cpu_hours"] == pytest.approx(72_000 / 20 / 3600)
    assert trend(curve(tmp_path / "old")) == pytest.approx(-50.0)  # FID per CPU-hour


def test_table_and_plot_are_written_and_bad_input_is_one_line(tmp_path, capsys):
    write_run(tmp_path / "c16", 1, [{"epoch": e, "seconds": 600} for e in (1, 2, 3)], [score(e, 35.0 * e, 300 - 20 * e) for e in (1, 2, 3)])
    assert main([str(tmp_path / "c16"), "--out", str(tmp_path / "out"), "--rate", "c16=100"]) == 0
    report = (tmp_path / "out" / "curves.md").read_text()
    assert "| 3 | 105 | 0.29 | 500 | 240.0 ± 1.0 | 0.100 | – |" in report and "-205.7 FID per CPU-hour" in report  # 20 FID per 35 kimg at 100 img/s
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main([str(tmp_path / "c16"), "--out", str(tmp_path / "x"), "--rate", "c32=100"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no stats.jsonl" in errors[0] and "no run named 'c32'" in errors[1]


def test_samples_picture_shows_each_runs_last_grid_from_either_layout(tmp_path, capsys):
    """A training run keeps samples/epoch-XXXX.png, a results folder samples-epoch-XXXX.png: the last of each, side by side."""
    import numpy as np
    from PIL import Image

    red, green, blue = (200, 0, 0), (0, 200, 0), (0, 0, 200)
    write_run(tmp_path / "run", 1, [{"epoch": e, "seconds": 600} for e in (1, 2)], [score(2, 70.0, 250.0)])
    write_run(tmp_path / "kept", 1, [{"epoch": 1, "seconds": 600}], [score(1, 35.0, 300.0)])
    (tmp_path / "run" / "samples").mkdir()
    for epoch, colour in ((1, red), (2, green)):
        Image.fromarray(np.full((64, 64, 3), colour, np.uint8)).save(tmp_path / "run" / "samples" / f"epoch-{epoch:04d}.png")
    Image.fromarray(np.full((64, 64, 3), blue, np.uint8)).save(tmp_path / "kept" / "samples-epoch-0001.png")
    assert last_samples(tmp_path / "run") == (2, tmp_path / "run" / "samples" / "epoch-0002.png")
    assert main([str(tmp_path / "run"), str(tmp_path / "kept"), "--out", str(tmp_path / "out")]) == 0
    pixels = {tuple(p) for p in np.asarray(Image.open(tmp_path / "out" / "samples.png").convert("RGB")).reshape(-1, 3)}
    assert green in pixels and blue in pixels and red not in pixels  # the last grid of each run, not an earlier one
    assert "samples.png" in capsys.readouterr().out

    write_run(tmp_path / "bare", 1, [{"epoch": 1, "seconds": 600}], [score(1, 35.0, 300.0)])
    assert main([str(tmp_path / "bare"), "--out", str(tmp_path / "out")]) == 0  # the same --out: its old picture goes
    assert not (tmp_path / "out" / "samples.png").exists() and "no sample grids" in capsys.readouterr().out
    (tmp_path / "bare" / "samples-epoch-0001.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "bare"), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
