"""Download the paper's dataset (`make data`): the Dataset/images/ folder of
github.com/ANI717/Anime_Face_Generation_with_GANs (63,565 JPEG anime faces, ~Kaggle animefacedataset).

    python -m training.download [--dest data/anime-faces]

Downloads the repository zip, extracts only the images into DEST (never overwriting a file already
there) and deletes the zip. Without network access it says so in one line and exits with code 2.
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

from training.dataset import IMAGE_EXTENSIONS

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download the BaMSGAN paper's anime-face images into a folder.")
    parser.add_argument("--dest", default="data/anime-faces", help="folder for the images (default: %(default)s)")
    parser.add_argument("--url", default=URL, help="zip of the repository (default: %(default)s)")
    args = parser.parse_args(argv)
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
