"""Exploration (issue 20): one training run, several G-EMA half-lives tracked side by side.

The EMA never feeds back into training, so every EMA here averages the very same G trajectory:
the comparison between half-lives is exact (paired), and one run serves them all. Every EVERY
steps each EMA gets its own standing statistics (as the trainer does each epoch) and it, the live G
and the trainer's own G-EMA (ema_decay 0.999) are scored with 1,000 faces against held-out faces.
usage: python ema_probe.py VARIANT SEED OUT.jsonl DEADLINE_EPOCH_SECONDS [EVERY]
"""
import copy, json, sys, time, types
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root (run from there: data paths are relative)
from training.config import TrainConfig, PAPER_ABLATIONS
from training.train import Trainer, load_data, standing_statistics
from training.dataset import load_images
from training import metrics

variant, seed, out, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
every = int(sys.argv[5]) if len(sys.argv) > 5 else 300
torch.set_num_threads(1)
config = TrainConfig(data="../shared/data/anime-faces-64/shard-00[0-6].tar", seed=seed, threads=1,
                     memory_fill_epoch=1, memory_replay_epoch=1, tensorboard=False, **PAPER_ABLATIONS[variant])
images, blurred = load_data(config)
held = load_images("../shared/data/anime-faces-64/shard-00[78].tar")
reals = held.pixels[torch.arange(1000) * len(held) // 1000].permute(0, 2, 3, 1).numpy()
trainer = Trainer(config, images.pixels, blurred, torch.device("cpu"))
extra = {"ema-10kimg-r0.05": dict(ema_kimg=10.0, ema_rampup=0.05), "ema-5kimg-r0.05": dict(ema_kimg=5.0, ema_rampup=0.05),
         "ema-10kimg-noramp": dict(ema_kimg=10.0, ema_rampup=None)}
emas = {name: copy.deepcopy(trainer.G_ema) for name in extra}
shadows = {name: types.SimpleNamespace(config=TrainConfig(**{**config.__dict__, **over}), step_count=0) for name, over in extra.items()}
steps_per_epoch = len(images.pixels) // config.batch_size

def score(step):
    nets = {"G-live": trainer.G, "ema-0.999": trainer.G_ema, **emas}
    row = {"step": step, "kimg": step * config.batch_size / 1000, "variant": variant, "seed": seed, "time": time.time()}
    for name, net in nets.items():
        if name != "G-live":
            standing_statistics(net, seed=seed * 100_003 + step)
        fakes = metrics.faces_from_generator(net, 1000)
        res = metrics.compute_metrics(fakes, reals, names=["swd", "sharpness", "diversity"], seed=0)
        row[name] = {k: v["value"] for k, v in res.items()}
    row["D"] = {k: float(v) for k, v in last.items() if k.startswith("D_")}
    torch.save({name: net.state_dict() for name, net in nets.items()}, out.replace(".jsonl", f"-step{step:05d}.pt"))
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)

start = time.time(); last = {}
while True:
    order = trainer.epoch_order(trainer.epoch)
    for i in range(steps_per_epoch):
        losses = trainer.step(order[i * config.batch_size:(i + 1) * config.batch_size])
        last = losses
        with torch.no_grad():
            for name, net in emas.items():
                shadows[name].step_count = trainer.step_count - 1
                decay = Trainer.ema_decay(shadows[name])
                torch._foreach_lerp_(list(net.parameters()), list(trainer.G.parameters()), 1.0 - decay)
        if trainer.step_count % every == 0:
            score(trainer.step_count)
            if time.time() > deadline:
                sys.exit(0)
    trainer.finish_epoch(0.0)
