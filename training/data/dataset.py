"""Training images: decode a folder / tar shards / glob (or draw synthetic faces) into one uint8 tensor.

`load_images(source)` returns an `ImageSet` whose `pixels` are uint8 [N, 3, 64, 64] RGB. Decoding
is done once: the result is cached on disk under a key made of the inputs' (path, size, mtime),
`max_images` and the image size, so later runs load it (memory-mapped) in well under a second.
Unreadable files are skipped, counted and reported, never fatal.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_EXTENSIONS = (".tar",)
CACHE_FORMAT = 1  # bump when the decoding or the cache layout changes
EXAMPLES = 5  # names of unreadable files kept for the report


@dataclass
class ImageSet:
    pixels: torch.Tensor  # uint8 [N, 3, IMAGE_SIZE, IMAGE_SIZE], RGB
    source: str
    skipped: int = 0  # files that could not be decoded
    skipped_examples: list[str] = field(default_factory=list)  # the first few of them
    cache_key: str | None = None  # identifies these pixels; blur_subset keys its cache on it
    cache_path: Path | None = None  # where they are cached (None: caching failed)
    from_cache: bool = False  # True when loaded from the cache instead of decoded

    def __len__(self) -> int:
        return self.pixels.shape[0]


# ----------------------------------------------------------------------------------------------
# Disk cache shared with training/blur.py.


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $BAMSGAN_CACHE, else ~/.cache/bamsgan."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("BAMSGAN_CACHE") or Path.home() / ".cache" / "bamsgan").expanduser()


def cache_digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def cache_load(path: Path) -> dict | None:
    """The cached dict at `path`, memory-mapped; None when missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, mmap=True, weights_only=True)
    except Exception as error:  # a truncated or foreign file is just a cache miss
        print(f"warning: ignoring unreadable cache file {path}: {error}", file=sys.stderr)
        return None


def cache_save(path: Path, payload: dict) -> Path | None:
    """Write `payload` atomically (temp file + os.replace); a failed write only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # unique per writer process
        try:
            with open(partial, "wb") as file:
                torch.save(payload, file)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return path
    except OSError as error:
        print(f"warning: could not write cache file {path}: {error}", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------
# Decoding.


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """Encoded image bytes -> uint8 [size, size, 3] RGB, or None when they do not decode.

    Alpha is dropped and grayscale expanded to RGB (cv2.IMREAD_COLOR); a non-square image is
    centre-cropped to a square first. Shrinking uses area interpolation; enlarging uses bicubic,
    as the shared 64 px dataset was made (area interpolation cannot add detail when enlarging).
    """
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    height, width = image.shape[:2]
    if height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    if image.shape[0] != size:
        shrink = image.shape[0] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


def find_inputs(source: str) -> list[Path]:
    """Image and tar files named by `source` (a folder, searched recursively; a file; or a glob), sorted."""
    expanded = os.path.expanduser(source)
    if glob.has_magic(expanded):
        matches = [Path(match) for match in glob.glob(expanded, recursive=True)]
        if not matches:
            raise FileNotFoundError(f"no files match the data pattern {source!r}")
    elif os.path.exists(expanded):
        matches = [Path(expanded)]
    else:
        raise FileNotFoundError(f"data path {source!r} does not exist (give a folder of images, a .tar, or a glob of .tar shards)")
    inputs = set()
    for match in matches:
        if match.is_dir():
            for folder, _, names in os.walk(match):  # os.walk/scandir: no extra syscall per file
                inputs.update(Path(folder, name) for name in names if _is_image(name) or _is_tar(name))
        elif match.is_file():
            inputs.add(match)
    return sorted(inputs, key=str)


def _open_tar(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]] | None:
    """An open tar and its image members sorted by name; None when the tar itself is unreadable."""
    try:
        tar = tarfile.open(path)
        return tar, sorted((m for m in tar.getmembers() if m.isfile() and _is_image(m.name)), key=lambda m: m.name)
    except (tarfile.TarError, OSError):
        return None


def _decode_all(inputs: list[Path], source: str, max_images: int | None, progress: bool) -> tuple[np.ndarray, list[str], int]:
    """Decode every image (files in sorted order, tar members by name) into uint8 NCHW."""
    items: list[tuple[str, Callable[[], bytes]]] = []  # (name for the report, read the bytes)
    tars = []
    for path in inputs:
        if not _is_tar(path.name):
            items.append((str(path), path.read_bytes))
        elif (opened := _open_tar(path)) is None:
            items.append((str(path), lambda: b""))  # an unreadable shard counts as one skipped file
        else:
            tar, members = opened
            tars.append(tar)
            items.extend((f"{path}:{m.name}", lambda tar=tar, m=m: tar.extractfile(m).read()) for m in members)
    limit = len(items) if max_images is None else min(len(items), max_images)
    pixels = np.empty((limit, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)  # filled NCHW directly
    count, skipped, examples = 0, 0, []
    try:
        with tqdm(total=limit, desc=f"decoding {source}", unit="img", disable=not progress, leave=False) as bar:
            for name, read in items:
                if count == limit:
                    break
                try:
                    image = decode_image(read())
                except (OSError, tarfile.TarError, cv2.error):
                    image = None
                if image is None:
                    skipped += 1
                    if len(examples) < EXAMPLES:
                        examples.append(name)
                    continue
                pixels[count] = image.transpose(2, 0, 1)
                count += 1
                bar.update(1)
    finally:
        for tar in tars:
            tar.close()
    return pixels[:count], examples, skipped


def _report_skipped(images: ImageSet) -> None:
    if images.skipped:
        examples = ", ".join(images.skipped_examples)
        print(f"warning: skipped {images.skipped} unreadable image file(s) in {images.source} (e.g. {examples})", file=sys.stderr)


# ----------------------------------------------------------------------------------------------


def load_images(
    source: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    synthetic_size: int = 8192,
    seed: int = 0,
    progress: bool = True,
) -> ImageSet:
    """Decode (or load from the cache) the training images named by `source`.

    `source` is "synthetic" (procedurally drawn faces: `synthetic_size` of them from `seed`), a
    folder (searched recursively for .jpg/.jpeg/.png/.webp/.bmp files and .tar shards), a single
    .tar, or a glob such as "../shared/data/anime-faces-64/shard-*.tar". `max_images` keeps the
    first N decodable images in sorted order (files by path, tar members by name).
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images}")
    if source == "synthetic":
        if synthetic_size < 1 or seed < 0:
            raise ValueError(f"synthetic data needs synthetic_size >= 1 and seed >= 0, got {synthetic_size} and {seed}")
        from training.data import synthetic

        count = synthetic_size if max_images is None else min(synthetic_size, max_images)
        code = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()  # new drawing code, new cache
        description = {"format": CACHE_FORMAT, "synthetic": count, "seed": seed, "size": IMAGE_SIZE, "code": code}
        decode = lambda: (np.ascontiguousarray(synthetic.synthetic_faces(count, seed, progress=progress).transpose(0, 3, 1, 2)), [], 0)
    else:
        inputs = find_inputs(source)
        if not inputs:
            raise ValueError(f"no image files (.jpg/.jpeg/.png/.webp/.bmp) or .tar shards found in {source!r}")
        stats = [(os.path.abspath(p), p.stat()) for p in inputs]
        files = [(path, stat.st_size, stat.st_mtime_ns) for path, stat in stats]
        description = {"format": CACHE_FORMAT, "inputs": files, "max_images": max_images, "size": IMAGE_SIZE}
        decode = lambda: _decode_all(inputs, source, max_images, progress)

    key = cache_digest(description)
    path = cache_root(cache_dir) / f"images-{key}.pt"
    cached = cache_load(path)
    if cached is not None:
        images = ImageSet(cached["pixels"], source, int(cached["skipped"]), list(cached["skipped_examples"]), key, path, True)
    else:
        pixels, examples, skipped = decode()
        if len(pixels) == 0:
            raise ValueError(f"none of the {skipped} image file(s) in {source!r} could be decoded (e.g. {', '.join(examples)})")
        pixels = torch.from_numpy(pixels)
        saved = cache_save(path, {"pixels": pixels, "skipped": skipped, "skipped_examples": examples, "source": source})
        images = ImageSet(pixels, source, skipped, examples, key, saved, False)
    _report_skipped(images)
    return images
