"""TensorBoard events of a training run (training/tensorboard_log.py), read back with TensorBoard's own
EventAccumulator: every stats.jsonl figure and the sample grid per epoch, each step once after a resume."""

import io
import json
import os
import shutil

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.tensorboard_log import tag_for
from training.train import LATEST, train

from .test_train import tiny_config


def events(run):
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def steps(accumulator, tag):
    return [event.step for event in accumulator.Scalars(tag)]


def test_a_run_writes_every_stats_figure_and_the_grid_per_epoch(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, epochs=2), run)
    board = events(run)
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [4, 8]  # 64 faces, batch 16
    for record in stats:
        for name, value in record.items():
            if name in ("epoch", "step"):
                continue
            logged = {event.step: event.value for event in board.Scalars(tag_for(name))}
            assert np.isclose(logged[record["step"]], value, rtol=1e-6), name
    tags = board.Tags()["scalars"]
    assert {"Loss/D", "Loss/G", "Loss/D_real", "Loss/D_blur", "D_logit/real", "D_logit/fake", "D_logit/blur",
            "D_logit/memory", "Speed/images_per_s"} <= set(tags)
    grids = board.Images("Samples/G_ema")
    assert [image.step for image in grids] == [4, 8]
    shown = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(shown, np.asarray(Image.open(run / "samples" / "epoch-0002.png")))  # the epoch's grid, losslessly


def test_a_resumed_run_appends_and_redone_steps_appear_once(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, epochs=2), run)
    # A crash after epoch 2's logs but before its checkpoint: the newest checkpoint is epoch 1's.
    os.unlink(run / LATEST)
    shutil.copy(run / "checkpoints" / "epoch-0001.pt", run / LATEST)
    resumed = train(tiny_config(tmp_path), run, resume=True, resume_epochs=3)
    assert resumed.step_count == 12
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the resumed sitting's own file, beside the first
    board = events(run)
    for tag in ("Loss/D", "D_logit/real", "Speed/images_per_s"):
        assert steps(board, tag) == [4, 8, 12], tag
    assert [image.step for image in board.Images("Samples/G_ema")] == [4, 8, 12]
    assert [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()] == [4, 8, 12]


def test_tensorboard_off_writes_no_events(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, epochs=1, tensorboard=False), run)
    assert not list(run.glob("events.out.tfevents.*")) and (run / "stats.jsonl").exists()


def test_tags_group_the_stats():
    assert [tag_for(name) for name in ("loss_D", "loss_D_memory", "D_blur", "images_per_s", "memory_images")] == \
        ["Loss/D", "Loss/D_memory", "D_logit/blur", "Speed/images_per_s", "Run/memory_images"]
