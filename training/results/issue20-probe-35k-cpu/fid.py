"""FID / precision / recall (issue 18's metrics) of the probe's saved nets and the released G-EMA, all at
the same N against the same held-out faces (the first N of shard-007/008; issue 18 measured the
real-vs-real floor at N = 1,000: 23.1).
usage: fid.py N OUT.jsonl NAME=CHECKPOINT or NAME=PROBE_STATE.pt:NET ..."""
import json, sys, time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root (run from there: data paths are relative)
from training import metrics
from training.checkpoint import generator_from_checkpoint, load_checkpoint
from training.constants import Z_DIM
from training.dataset import load_images
from training.networks import Generator

n, out = int(sys.argv[1]), sys.argv[2]
held = load_images("../shared/data/anime-faces-64/shard-00[78].tar", progress=False)
pix = held.pixels.permute(0, 2, 3, 1).numpy()
reals = pix[:n]
weights = metrics.find_inception_weights()
for spec in sys.argv[3:]:
    name, path = spec.split("=", 1)
    if ":" in path:
        path, net = path.split(":")
        G = Generator(Z_DIM, 16, True)
        G.load_state_dict(torch.load(path, weights_only=True)[net])
    else:
        G = generator_from_checkpoint(load_checkpoint(path))
    start = time.time()
    fakes = metrics.faces_from_generator(G, n)
    results, _ = metrics.inception_metrics(fakes, reals, ["fid", "precision", "recall"], inception_weights=weights)
    row = {"name": name, "n": n, "seconds": round(time.time() - start), **{k: {"value": v["value"], "uncertainty": v.get("uncertainty"),
           "floor": (v.get("floor") or {}).get("value")} for k, v in results.items()}}
    open(out, "a").write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
