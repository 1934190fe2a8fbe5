"""The whole system end to end, from a fresh clone (make demo):

    python -m clients.demo [--data synthetic] [--epochs E]

1. train    python -m training.train --data synthetic [--epochs E] --out runs/demo-<time>
2. export   python -m export --run runs/demo-<time>          (a new version in model_repository/)
3. serve    Triton (serving.TritonServer) on free ports
4. generate python -m clients.generate ... faces by seed: a grid and one PNG per seed
5. released python -m export --ckpt export/released/bamsgan-g-ema.pt --repository OUT/released_repository
            the released generator (export/release.py) exported the same way, its faces for the
            same seeds from its generator.onnx (ONNX Runtime), beside the short run's:
            OUT/side_by_side.png. Skipped, with one line, when the release file is absent.
6. bench    python -m clients.benchmark ... a short sweep, served vs raw ONNX Runtime
7. stop     the server (always, also when a stage fails or on Ctrl-C)

Each stage runs as a subprocess under a header that shows its command, so any stage can be
re-run by hand. A failing stage stops the demo with its exit code. About 5-8 minutes on 2 CPU
cores with the defaults; training dominates (--epochs sets it).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the type hints only: main imports serving.launcher when it reaches the serve stage
    from serving.launcher import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_COUNT = 64
SEEDS = f"0-{SEED_COUNT - 1}"


class StageFailed(RuntimeError):
    def __init__(self, name: str, code: int):
        super().__init__(f"stage '{name}' failed (exit {code}); its output is above")
        self.code = code


class Stages:
    """Numbered stage headers and timing."""

    def __init__(self, total: int):
        self.total, self.number, self.started = total, 0, time.perf_counter()

    def header(self, name: str, detail: str) -> None:
        self.number += 1
        elapsed = time.perf_counter() - self.started
        print(f"\n=== [{self.number}/{self.total}] {name} (t+{elapsed:.0f} s) ===\n$ {detail}", flush=True)

    def run(self, name: str, command: list[str]) -> None:
        self.header(name, shlex.join(command))
        code = subprocess.run(command, cwd=REPO_ROOT).returncode
        if code != 0:
            raise StageFailed(name, code)


def released_stage(stages: Stages, python: str, run_dir: Path, out: Path, weights: Path) -> Path:
    """Export the released generator into the demo's folder (parity-checked, as the server would load it),
    draw the demo's seeds with its generator.onnx and put them beside the short run's served faces."""
    import numpy as np
    from PIL import Image

    from clients.endpoints import MODEL
    from export.release import release_summary
    from training.checkpoint import LATEST, load_checkpoint
    from clients.evaluate import faces_from_version
    from training.data.images import image_grid, side_by_side

    repository = out / "released_repository"
    stages.run("released", [python, "-m", "export", "--ckpt", str(weights), "--repository", str(repository), "--no-fp16"])
    released, _, _ = faces_from_version(repository / MODEL, SEED_COUNT, SEED_COUNT, progress=False)
    demo_epochs = load_checkpoint(run_dir / LATEST)["epoch"]
    panels = [(np.asarray(Image.open(out / "faces.png").convert("RGB")), f"this demo's {demo_epochs}-epoch run"),
              (image_grid(released), f"released generator ({release_summary(load_checkpoint(weights))})")]
    return side_by_side(panels, out / "side_by_side.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", help="training data: synthetic or a PATH (default %(default)s)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the CPU preset's, a few minutes on 2 cores)")
    parser.add_argument("--synthetic-size", type=int, help="images in the synthetic data set (default: the trainer's)")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository", help="model repository to publish into and serve")
    parser.add_argument("--out", type=Path, help="where pictures and figures go (default out/demo-<time>)")
    return parser.parse_args(argv)


def train_command(python: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The train stage's command: the trainer on --data into run_dir, with --epochs/--synthetic-size when given."""
    train = [python, "-m", "training.train", "--data", args.data, "--out", str(run_dir)]
    if args.epochs:
        train += ["--epochs", str(args.epochs)]
    if args.synthetic_size:
        train += ["--synthetic-size", str(args.synthetic_size)]
    return train


def serve_stage(stages: Stages, server: TritonServer, repository: Path) -> None:
    """Start Triton under the serve header, which shows the `python -m serving` command that does the same."""
    from serving.launcher import LaunchError

    stages.header("serve", f"serving.TritonServer, the same as: python -m serving --model-repository {repository} "
                           f"--grpc-port {server.grpc_port} --http-port {server.http_port} --metrics-port {server.metrics_port}")
    try:
        server.start(timeout=180)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        raise StageFailed("serve", 2) from None
    print(f"Triton ready in {server.startup_seconds:.1f} s at {server.grpc_url} "
          f"(models {server.models}, log {server.log_path})", flush=True)


def print_outputs(stages: Stages, run_dir: Path, out: Path, comparison: Path | None) -> None:
    """Where the demo's pictures and figures are."""
    print(f"\nDone in {time.perf_counter() - stages.started:.0f} s. Pictures and figures:")
    print(f"  training samples   {run_dir / 'samples' / 'latest.png'}  (one per epoch in {run_dir / 'samples'})")
    print(f"  checkpoint         {run_dir / 'checkpoint-latest.pt'}")
    print(f"  served faces       {out / 'faces.png'}  (seeds {SEEDS}; one PNG per seed in {out / 'faces'})")
    if comparison is not None:
        print(f"  side by side       {comparison}  (the same seeds from the released generator)")
    print(f"  benchmark          {out / 'bench' / 'latency_throughput.png'}, results.json, results.csv")
    print(f"  server log         {out / 'tritonserver.log'}")
    print("Serve it yourself: make serve, then python -m clients.generate --seeds 0-63 --out grid.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = REPO_ROOT / "runs" / f"demo-{stamp}"
    out = args.out or REPO_ROOT / "out" / f"demo-{stamp}"
    python = sys.executable
    from export.release import RELEASED_WEIGHTS, repo_relative

    released = RELEASED_WEIGHTS.is_file()
    stages = Stages(total=7 if released else 6)
    server, comparison = None, None
    try:
        stages.run("train", train_command(python, args, run_dir))
        stages.run("export", [python, "-m", "export", "--run", str(run_dir), "--repository", str(args.repository)])

        from serving.launcher import TritonServer, free_ports

        grpc_port, http_port, metrics_port = free_ports(3)
        server = TritonServer(args.repository, grpc_port, http_port, metrics_port, log_path=out / "tritonserver.log")
        serve_stage(stages, server, args.repository)

        url = server.grpc_url
        stages.run("generate", [python, "-m", "clients.generate", "--url", url, "--seeds", SEEDS,
                                "--out", str(out / "faces.png"), "--each", str(out / "faces")])
        if released:
            comparison = released_stage(stages, python, run_dir, out, RELEASED_WEIGHTS)
            print(f"side by side: {comparison}", flush=True)
        else:
            print(f"\nNo released generator at {repo_relative(RELEASED_WEIGHTS)} (python -m export.release makes one): "
                  "no side-by-side picture.", flush=True)
        stages.run("bench", [python, "-m", "clients.benchmark", "--url", url, "--out", str(out / "bench"),
                             "--batch-sizes", "1,16", "--concurrency", "1,4", "--window", "2", "--warmup", "1",
                             "--max-windows", "4", "--compare-raw", str(args.repository)])
    except StageFailed as error:
        print(f"\ndemo: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            stages.header("stop", "stop Triton")
            code = server.stop()
            print(f"Triton stopped (exit {code}).", flush=True)

    print_outputs(stages, run_dir, out, comparison)
    return 0

if __name__ == "__main__":
    sys.exit(main())
