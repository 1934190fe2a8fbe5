"""The pip requirements of the serving image, taken from the project's requirements files.

    python3 serving/docker/image_requirements.py [--gpu] > serving-requirements.txt

NVIDIA's Triton container brings tritonserver and its Python backend; the image adds only what
runs inside it, at the versions requirements.txt / requirements-gpu.txt pin for the whole project
(one definition: numpy < 2 and its reason live there):
  numpy         the Python backend's tensors (numpy 2 made Triton 2.41's backend return empty tensors)
  onnxruntime   the generator in model.py (onnxruntime-gpu on the GPU image, from requirements-gpu.txt)
  tritonclient  the launcher's readiness wait (`python -m serving`), the same release as the server
Standard library only: it runs in `docker build` before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements.txt"
GPU_REQUIREMENTS = REPO_ROOT / "requirements-gpu.txt"
IMAGE_PACKAGES = ("numpy", "tritonclient")
# onnxruntime-gpu >= 1.19 is built against cuDNN 9; NVIDIA's 23.12 container shipped cuDNN 8.9, so
# the GPU image adds cuDNN 9 from its pip wheel (its own soname and folder: the container's cuDNN is untouched).
GPU_EXTRAS = ("nvidia-cudnn-cu12>=9,<10",)


def requirement_lines(path: Path) -> dict[str, str]:
    """{normalised package name: requirement line without its comment} of a requirements file."""
    lines = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            lines[re.sub(r"[-_.]+", "-", match.group(0)).lower()] = line
    return lines


def image_requirements(gpu: bool = False, requirements: Path = REQUIREMENTS, gpu_requirements: Path = GPU_REQUIREMENTS) -> list[str]:
    available = requirement_lines(requirements)
    if gpu:
        available.update(requirement_lines(gpu_requirements))
    wanted = [*IMAGE_PACKAGES, "onnxruntime-gpu" if gpu else "onnxruntime"]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not pinned in {requirements.name}{' / ' + gpu_requirements.name if gpu else ''}")
    return [available[name] for name in wanted] + (list(GPU_EXTRAS) if gpu else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image_requirements.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU image: onnxruntime-gpu (+ cuDNN 9)")
    args = parser.parse_args(argv)
    print("\n".join(image_requirements(args.gpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
