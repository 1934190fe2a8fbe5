"""This trainer beside two GPU peers on the same faces, for the same GPU minutes, scored by the same FID.

    make setup-peers                                 # lightweight-gan 1.2.1, stylegan2-pytorch 1.9.0 in .venv-peers (GPU boxes)
    python -m clients.gpu_peers --minutes 10 [--data SHARDS] [--real HELD_OUT] [--count 5000] [--out out/peers-<time>]
    make gpu-check GPU_CHECK_ARGS='--parts peers --budget 2400'     # the same, as gpu-check's optional part

The peers are lucidrains' lightweight-gan (FastGAN, Liu et al. 2021) and stylegan2-pytorch, the
StyleGAN2 one of the student reports used. Both refuse to run without CUDA, and so does this
command (one line, exit 2). Each of the three trains in a subprocess of its own for --minutes:
this trainer (the paper preset's networks, SAGAN configuration, bf16) stops after the epoch that
reaches them; the peers train until stopped and keep their last checkpoint (saved every
SAVE_EVERY steps). Then each draws --count faces and clients.evaluate scores them against the
same held-out faces (FID, KID, precision/recall, each with its real-vs-real floor):
- this trainer: G-EMA at seeds 0..N-1, as served;
- lightweight-gan: its EMA generator, one face per file (its CLI's --generate);
- stylegan2-pytorch: its EMA generator without truncation (psi 1, as ours), cut out of the 8x8
  sample grids its CLI writes.
The peers live in a venv of their own (.venv-peers, from requirements-peers.txt: they pull in
torchvision, aim and kornia, which this project's venv does without); their commands are taken
from .venv-peers/bin, else from PATH. The peers' CLIs write JPEG (PIL's quality 75), which costs them a little FID: said in the report.

Writes --out/peers.json and peers.md (the table), with each subprocess's log under --out/logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = "requirements-peers.txt"
PEERS = {"lightweight-gan": "lightweight_gan", "stylegan2-pytorch": "stylegan2_pytorch"}  # name -> command
PEERS_VENV = REPO_ROOT / ".venv-peers"  # make setup-peers
DEFAULT_DATA = "../shared/data/anime-faces-64/shard-00[0-6].tar"
DEFAULT_REAL = "../shared/data/anime-faces-64/shard-00[78].tar"
SAVE_EVERY = 200  # peer steps between checkpoints: what a stop at the deadline can lose
GRID_TILES, GRID_PADDING = 8, 2  # stylegan2-pytorch's sample grids: 8 x 8 faces, torchvision's 2 px padding
METRICS = "fid,kid,precision,recall"
NO_CUDA = ("the GPU peers (lightweight-gan 1.2.1, stylegan2-pytorch 1.9.0) refuse to run without CUDA, and "
           "torch.cuda.is_available() is False here: run this on a GPU box")


class PeersError(RuntimeError):
    """A step that cannot run, in one line."""


def peer_executable(peer: str) -> str | None:
    """The peer's command: in .venv-peers, else on PATH, else None."""
    own = PEERS_VENV / "bin" / PEERS[peer]
    return str(own) if own.is_file() else shutil.which(PEERS[peer])


def missing_reason() -> str | None:
    """Why the comparison cannot run here (no CUDA, a peer not installed), or None."""
    import torch

    if not torch.cuda.is_available():
        return NO_CUDA
    missing = [peer for peer in PEERS if peer_executable(peer) is None]
    if missing:
        return f"{', '.join(missing)} not installed: make setup-peers (a venv of their own from {REQUIREMENTS})"
    return None


def run_until(command: list[str], seconds: float, log: Path) -> dict:
    """Run a command for at most `seconds` (then stop it: the peers train until stopped); its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "w") as output:
        output.write("$ " + " ".join(command) + "\n")
        output.flush()
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            code, stopped = process.wait(timeout=max(1.0, seconds)), False
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            code, stopped = None, True
    return {"returncode": code, "stopped_at_deadline": stopped, "seconds": round(time.monotonic() - started, 1), "log": str(log)}


def export_faces(data: str, folder: Path) -> int:
    """The training faces as PNG files, for the peers (they read a folder of images)."""
    from training.data.dataset import load_images
    from training.data.images import save_png

    images = load_images(data, progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(images.pixels.permute(0, 2, 3, 1).numpy()):
        save_png(folder / f"{index:06d}.png", face)
    return len(images.pixels)


def train_ours(args, minutes: float) -> tuple[dict, list[str]]:
    """This trainer for `minutes` of training; (its run record, the evaluate flags for its faces)."""
    run = args.out / "bamsgan"
    command = [sys.executable, "-m", "training.train", "--data", args.data, "--preset", "paper", "--ablation", "sagan",
               "--device", "cuda", "--minutes", str(minutes), "--epochs", "100000", "--no-tensorboard", "--out", str(run)]
    record = run_until(command, minutes * 60 * 1.5 + 300, args.out / "logs" / "bamsgan.log")  # a last epoch may overrun
    return record, ["--run", str(run)]


def peer_command(peer: str, args, *extra: str) -> list[str]:
    """A peer CLI call on this comparison's folders (models and samples under --out/<peer>/)."""
    folder = args.out / peer
    return [peer_executable(peer) or PEERS[peer], "--name", "peer", "--models_dir", str(folder / "models"),
            "--results_dir", str(folder / "results"), "--image_size", "64", *extra]


def train_peer(peer: str, args, faces: Path, minutes: float) -> tuple[dict, list[str]]:
    """A peer for `minutes`, then --count of its EMA faces as files; (its record, the evaluate flags)."""
    training = ["--data", str(faces), "--batch_size", "32", "--gradient_accumulate_every", "1", "--num_train_steps", "100000000",
                "--save_every", str(SAVE_EVERY), "--new"]
    if peer == "stylegan2-pytorch":
        training += ["--network_capacity", "16"]
    record = run_until(peer_command(peer, args, *training), minutes * 60, args.out / "logs" / f"{peer}.log")
    folder = peer_faces(peer, args)
    return record, ["--images", str(folder)]


def peer_faces(peer: str, args) -> Path:
    """Generate --count faces from the peer's last checkpoint into --out/<peer>/faces/."""
    results, faces = args.out / peer / "results", args.out / peer / "faces"
    if peer == "lightweight-gan":
        extra = ["--generate", "--num_image_tiles", str(args.count), "--generate_types", "['ema']"]
    else:
        extra = ["--generate", "--num_generate", str(math.ceil(args.count / GRID_TILES**2)), "--num_image_tiles", str(GRID_TILES),
                 "--trunc_psi", "1.0"]
    done = run_until(peer_command(peer, args, *extra), 1800, args.out / "logs" / f"{peer}-generate.log")
    if done["returncode"] != 0:
        raise PeersError(f"{peer} could not generate faces (exit {done['returncode']}); see {done['log']}")
    files = sorted(results.rglob("*-ema.jpg"))
    faces.mkdir(parents=True, exist_ok=True)
    if peer == "stylegan2-pytorch":
        files = cut_grids(files, faces)
    for index, path in enumerate(files[: args.count]):
        shutil.copy(path, faces / f"{index:06d}{path.suffix}")
    return faces


def cut_grids(grids: list[Path], folder: Path, tiles: int = GRID_TILES, size: int = 64, padding: int = GRID_PADDING) -> list[Path]:
    """Each tiles x tiles sample grid (torchvision.utils.save_image's layout) cut into its faces, as PNG files."""
    from PIL import Image

    from training.data.images import save_png

    cut = []
    for number, grid in enumerate(grids):
        pixels = np.asarray(Image.open(grid).convert("RGB"))
        expected = tiles * (size + padding) + padding
        if pixels.shape[:2] != (expected, expected):
            raise PeersError(f"{grid} is {pixels.shape[1]}x{pixels.shape[0]}, not a {tiles}x{tiles} grid of {size}px faces")
        for row in range(tiles):
            for column in range(tiles):
                y, x = padding + row * (size + padding), padding + column * (size + padding)
                cut.append(folder / f"grid{number:04d}-{row}{column}.png")
                save_png(cut[-1], pixels[y : y + size, x : x + size])
    return cut


def score(name: str, source: list[str], args) -> dict:
    """clients.evaluate on one generator's faces: its JSON result, or the reason it failed."""
    out = args.out / f"evaluation-{name}.json"
    command = [sys.executable, "-m", "clients.evaluate", *source, "--real", args.real, "--count", str(args.count),
               "--metrics", METRICS, "--no-progress", "--out", str(out), "--device", "cuda" if "--run" in source else "cpu"]
    done = run_until(command, 3600, args.out / "logs" / f"evaluate-{name}.log")
    if done["returncode"] != 0 or not out.is_file():
        return {"error": f"evaluation failed (exit {done['returncode']}); see {done['log']}"}
    return json.loads(out.read_text())


def table(results: dict[str, dict], minutes: float, count: int) -> str:
    lines = [f"# This trainer against its GPU peers: {minutes:g} GPU minutes each, N = {count} faces", "",
             "| generator | FID ↓ (floor) | KID ↓ | precision ↑ | recall ↑ | trained s | stopped at deadline |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, result in results.items():
        figures = (result.get("evaluation") or {}).get("metrics", {})
        cell = lambda metric: "n/a" if (figures.get(metric) or {}).get("value") is None else f"{figures[metric]['value']:.3g}"
        floor = (figures.get("fid") or {}).get("floor")
        fid = cell("fid") + (f" ({floor:.3g})" if isinstance(floor, (int, float)) else "")
        training = result.get("training", {})
        lines.append(f"| {name} | {fid} | {cell('kid')} | {cell('precision')} | {cell('recall')} | "
                     f"{training.get('seconds', 'n/a')} | {training.get('stopped_at_deadline', 'n/a')} |")
    lines += ["", "The peers' samples are JPEG (their CLIs' format, PIL quality 75); this trainer's are lossless."]
    return "\n".join(lines)


def compare(args) -> dict[str, dict]:
    """Train the three for --minutes each, one after another, then score each."""
    faces = args.out / "faces"
    print(f"gpu-peers: {export_faces(args.data, faces)} training faces from {args.data} -> {faces}", flush=True)
    results = {}
    for name in ("bamsgan", *PEERS):
        print(f"gpu-peers: training {name} for {args.minutes:g} minutes", flush=True)
        try:
            training, source = train_ours(args, args.minutes) if name == "bamsgan" else train_peer(name, args, faces, args.minutes)
            results[name] = {"training": training, "evaluation": score(name, source, args)}
        except PeersError as error:
            results[name] = {"error": str(error)}
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.gpu_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="GPU minutes of training for each of the three (default %(default)s)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="training faces (any load_images source; default %(default)s)")
    parser.add_argument("--real", default=DEFAULT_REAL, help="held-out real faces for the scores (default %(default)s)")
    parser.add_argument("--count", type=int, default=5000, help="faces per generator and real faces (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default out/peers-<time>)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.count < 100:
        parser.error(f"--minutes must be positive and --count at least 100, got {args.minutes} and {args.count}")
    args.out = args.out or Path("out") / f"peers-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = missing_reason()
    if reason is not None:
        print(f"gpu-peers: {reason}", file=sys.stderr)
        return 2
    results = compare(args)
    report = table(results, args.minutes, args.count)
    (args.out / "peers.json").write_text(json.dumps({"minutes": args.minutes, "count": args.count, "data": args.data,
                                                     "real": args.real, "results": results}, indent=2))
    (args.out / "peers.md").write_text(report + "\n")
    print(report)
    return 0 if all("error" not in result for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
