"""Download the paper's dataset and the metrics' face detector (`make data`).

    python -m training.data.download [--dest data/anime-faces] [--what images|detector|all]   (make data: all)

Images: the Dataset/images/ folder of github.com/ANI717/Anime_Face_Generation_with_GANs (63,565
JPEG anime faces, ~Kaggle animefacedataset): downloads the repository zip, extracts only the images
into DEST (never overwriting a file already there) and deletes the zip. Detector: nagadomi's
lbpcascade_animeface.xml into data/ (where training.metrics.face_quality.find_detector looks), kept if present.
Without network access each says so in one line and the command exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from training.data.dataset import IMAGE_EXTENSIONS
from training.metrics.face_quality import DETECTOR_DEFAULTS, DETECTOR_URL

URL = "https://codeload.github.com/ANI717/Anime_Face_Generation_with_GANs/zip/HEAD"  # default branch
IMAGES_FOLDER = "/Dataset/images/"
TIMEOUT_S = 30


def download(url: str, file) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="downloading") as bar:
            while chunk := response.read(1 << 20):
                file.write(chunk)
                bar.update(len(chunk))


def extract_images(archive: str | os.PathLike, dest: Path) -> tuple[int, int]:
    """Copy the Dataset/images/ members into dest (flat); returns (written, already present)."""
    written = present = 0
    with zipfile.ZipFile(archive) as zip_file:
        members = [m for m in zip_file.infolist() if IMAGES_FOLDER in m.filename and m.filename.lower().endswith(IMAGE_EXTENSIONS)]
        for member in tqdm(members, unit="img", desc="extracting"):
            target = dest / Path(member.filename).name
            if target.exists():
                present += 1
                continue
            partial = target.with_name(f".{target.name}.partial")
            with zip_file.open(member) as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
            os.replace(partial, target)
            written += 1
    return written, present


def fetch_detector(dest: Path, url: str = DETECTOR_URL) -> int:
    """Download the face detector for the metrics into dest (atomically; an existing file is kept)."""
    if dest.exists():
        print(f"{dest} already there")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(partial, "wb") as file:
            shutil.copyfileobj(response, file)
        os.replace(partial, dest)
    except (urllib.error.URLError, HTTPException, OSError) as error:
        host = urllib.parse.urlsplit(url).hostname
        print(f"error: could not reach {host} to fetch the face detector ({getattr(error, 'reason', None) or error}); "
              "the metrics take it by path instead: --detector ../shared/models/lbpcascade_animeface.xml", file=sys.stderr)
        return 2
    finally:
        if partial.exists():
            partial.unlink()
    print(f"face detector written to {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download the BaMSGAN paper's anime-face images and the metrics' face detector.")
    parser.add_argument("--dest", default="data/anime-faces", help="folder for the images (default: %(default)s)")
    parser.add_argument("--url", default=URL, help="zip of the repository (default: %(default)s)")
    parser.add_argument("--detector-url", default=DETECTOR_URL, help="lbpcascade_animeface.xml (default: %(default)s)")
    parser.add_argument("--detector-dest", default=str(DETECTOR_DEFAULTS[0]), help="where to put it (default: %(default)s)")
    parser.add_argument("--what", choices=("images", "detector", "all"), default="images", help="what to fetch (default: %(default)s)")
    args = parser.parse_args(argv)
    detector_code = fetch_detector(Path(args.detector_dest), args.detector_url) if args.what in ("detector", "all") else 0
    images_code = download_images(args) if args.what in ("images", "all") else 0
    return max(detector_code, images_code)


def download_images(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".download-", suffix=".zip") as archive:
            download(args.url, archive)
            archive.flush()
            written, present = extract_images(archive.name, dest)
    except (urllib.error.URLError, HTTPException, OSError, zipfile.BadZipFile) as error:
        if created and not any(dest.iterdir()):
            dest.rmdir()
        host = urllib.parse.urlsplit(args.url).hostname
        reason = getattr(error, "reason", None) or error
        print(f"error: could not reach {host} to download the dataset ({reason}); instead point --data at any folder "
              "or tar shards of images, e.g. --data '../shared/data/anime-faces-64/shard-*.tar'", file=sys.stderr)
        return 2
    print(f"{written} images written to {dest} ({present} already there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
