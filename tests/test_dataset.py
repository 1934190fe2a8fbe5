"""load_images on real anime faces: tar shards, globs, mixed folders, unreadable files, the cache; and
training.data.download's offline path."""

import io
import os
import tarfile
import zipfile

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.paths import MINI_TAR, SHARDS
from training.data import download
from training.data.dataset import decode_image, load_images

needs_mini = pytest.mark.skipif(not MINI_TAR.is_file(), reason=f"real test data {MINI_TAR} is absent")
needs_shard = pytest.mark.skipif(not (SHARDS / "shard-001.tar").is_file(), reason=f"real test data {SHARDS} is absent")


def tar_members(path, count):
    """The first `count` (name, jpeg bytes) of a tar, by name."""
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)[:count]
        return [(m.name, tar.extractfile(m).read()) for m in members]


def rgb_of(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@needs_mini
def test_mini_tar_loads_all_512(tmp_path):
    images = load_images(str(MINI_TAR), cache_dir=tmp_path, progress=False)
    assert images.pixels.dtype == torch.uint8 and images.pixels.shape == (512, 3, 64, 64)
    assert len(images) == 512 and images.skipped == 0 and not images.from_cache
    name, jpeg = tar_members(MINI_TAR, 1)[0]
    assert np.array_equal(images.pixels[0].permute(1, 2, 0).numpy(), decode_image(jpeg))  # sorted order, RGB
    assert np.abs(images.pixels[0].permute(1, 2, 0).numpy().astype(int) - rgb_of(jpeg)).max() <= 8  # PIL agrees up to JPEG IDCT


@needs_mini
def test_glob_of_tar_shards_in_sorted_order(tmp_path):
    members = tar_members(MINI_TAR, 30)
    write_tar(tmp_path / "part-b.tar", members[20:])
    write_tar(tmp_path / "part-a.tar", members[:20])
    images = load_images(str(tmp_path / "part-*.tar"), cache_dir=tmp_path / "cache", progress=False)
    expected = np.stack([decode_image(data) for _, data in members]).transpose(0, 3, 1, 2)
    assert np.array_equal(images.pixels.numpy(), expected)
    first = load_images(str(tmp_path / "part-*.tar"), cache_dir=tmp_path / "cache", max_images=7, progress=False)
    assert torch.equal(first.pixels, images.pixels[:7])


@needs_shard
def test_mixed_folder_skips_unreadable_files(tmp_path, capsys):
    (name, jpeg), *others = tar_members(SHARDS / "shard-001.tar", 6)
    rgbs = [rgb_of(data) for _, data in others]
    root = tmp_path / "faces"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "a" / name).write_bytes(jpeg)
    (root / "a" / "b" / "lossless.PNG").write_bytes(encode(rgbs[0], "PNG"))
    (root / "c" / "face.webp").write_bytes(encode(rgbs[1], "WEBP", lossless=True))
    (root / "face.bmp").write_bytes(encode(rgbs[2], "BMP"))
    (root / "gray.jpeg").write_bytes(encode(np.asarray(Image.fromarray(rgbs[3]).convert("L")), "JPEG"))
    (root / "alpha.png").write_bytes(encode(np.dstack([rgbs[4], np.full((64, 64), 128, np.uint8)]), "PNG"))
    (root / "c" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage!" * 40)
    (root / "c" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")

    images = load_images(str(root), cache_dir=tmp_path / "cache", progress=False)
    assert images.pixels.shape == (6, 3, 64, 64)
    assert images.skipped == 2
    assert sorted(os.path.basename(n) for n in images.skipped_examples) == ["corrupt.jpg", "empty.png"]
    assert "skipped 2 unreadable" in capsys.readouterr().err
    loaded = {tuple(p.permute(1, 2, 0).reshape(-1)[:64].tolist()) for p in images.pixels}
    for rgb in rgbs[:3] + rgbs[4:]:  # lossless formats come back exactly, in RGB order, alpha dropped
        assert tuple(rgb.reshape(-1)[:64].tolist()) in loaded
    gray = images.pixels[[i for i, p in enumerate(images.pixels) if torch.equal(p[0], p[1]) and torch.equal(p[1], p[2])]]
    assert len(gray) == 1  # the grayscale JPEG became 3 equal channels


@needs_mini
def test_other_sizes_are_cropped_and_resized(tmp_path):
    rgb = decode_image(tar_members(MINI_TAR, 1)[0][1])
    doubled = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_NEAREST)  # area-downsampling undoes this exactly
    tall = np.concatenate([np.full((16, 64, 3), 255, np.uint8), rgb, np.zeros((16, 64, 3), np.uint8)])  # 96 x 64
    small = cv2.resize(rgb, (40, 40), interpolation=cv2.INTER_AREA)
    (tmp_path / "a_doubled.png").write_bytes(encode(doubled, "PNG"))
    (tmp_path / "b_tall.png").write_bytes(encode(tall, "PNG"))
    (tmp_path / "c_small.png").write_bytes(encode(small, "PNG"))
    images = load_images(str(tmp_path), cache_dir=tmp_path / "cache", progress=False)
    pixels = images.pixels.permute(0, 2, 3, 1).numpy()
    assert pixels.shape == (3, 64, 64, 3)
    assert np.array_equal(pixels[0], rgb)
    assert np.array_equal(pixels[1], rgb)  # centre crop drops the bands
    assert np.abs(pixels[2].astype(int) - rgb.astype(int)).mean() < 20  # enlarged, blurrier but the same face


@needs_mini
def test_second_load_comes_from_the_cache(tmp_path, capsys):
    source = tmp_path / "faces"
    source.mkdir()
    for name, data in tar_members(MINI_TAR, 20):
        (source / name).write_bytes(data)
    (source / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cache = tmp_path / "cache"
    first = load_images(str(source), cache_dir=cache, progress=False)
    assert not first.from_cache and first.cache_path.is_file()
    assert list(cache.iterdir()) == [first.cache_path]  # one file, no leftover temp files
    capsys.readouterr()

    second = load_images(str(source), cache_dir=cache, progress=False)
    assert second.from_cache and second.cache_path == first.cache_path
    assert torch.equal(second.pixels, first.pixels)
    assert (second.skipped, second.skipped_examples) == (1, first.skipped_examples)
    assert "skipped 1 unreadable" in capsys.readouterr().err  # the report repeats on a cache hit

    first.cache_path.write_bytes(b"truncated")  # an unreadable cache file is rebuilt, not fatal
    rebuilt = load_images(str(source), cache_dir=cache, progress=False)
    assert not rebuilt.from_cache and torch.equal(rebuilt.pixels, first.pixels)
    os.utime(source / "broken.jpg", ns=(1, 1))  # a changed input is a new key
    assert not load_images(str(source), cache_dir=cache, progress=False).from_cache
    assert len(list(cache.iterdir())) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BAMSGAN_CACHE", str(tmp_path / "env-cache"))
    images = load_images("synthetic", synthetic_size=4, progress=False)
    assert images.cache_path.parent == tmp_path / "env-cache"


def test_missing_path_and_empty_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(str(tmp_path / "nowhere"), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no files match"):
        load_images(str(tmp_path / "shard-*.tar"), cache_dir=tmp_path)


def test_nothing_decodable(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_images(str(tmp_path / "empty"), cache_dir=tmp_path / "cache")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\x89PNG garbage" * 40)
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 2 image file\(s\) in .*bad.* could be decoded"):
        load_images(str(bad), cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="max_images"):
        load_images(str(bad), cache_dir=tmp_path / "cache", max_images=0)


def test_download_extracts_only_images_and_never_overwrites(tmp_path, capsys):
    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("Repo-main/README.md", "readme")
        zip_file.writestr("Repo-main/Dataset/images/1.jpg", b"new one")
        zip_file.writestr("Repo-main/Dataset/images/2.png", b"new two")
        zip_file.writestr("Repo-main/Training/model.py", "code")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "1.jpg").write_bytes(b"mine")
    assert download.main(["--dest", str(dest), "--url", archive.as_uri()]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["1.jpg", "2.png"]
    assert (dest / "1.jpg").read_bytes() == b"mine" and (dest / "2.png").read_bytes() == b"new two"
    assert "1 images written" in capsys.readouterr().out


def test_download_without_network_says_so_in_one_line(tmp_path, capsys):
    dest = tmp_path / "data"
    code = download.main(["--dest", str(dest), "--url", "http://127.0.0.1:9/repo.zip"])
    err = capsys.readouterr().err
    assert code == 2 and not dest.exists()
    assert err.count("\n") == 1 and "could not reach 127.0.0.1" in err and "--data" in err
