"""Init container: put one exported model version into the pod's model repository.

    python -m serving.k8s.fetch_model --source https://models.example.com/bamsgan-3.tar.gz \\
        --sha256 <hex> --to /models --instance-kind KIND_GPU

The pod serves a model repository assembled at start-up in a memory-backed or node-local volume:

    /models/bamsgan/config.pbtxt   the tracked model_repository/bamsgan/config.pbtxt baked into the
                                   image, with the overlay's instance kind (KIND_GPU / KIND_CPU) and,
                                   on CPU, ONNX Runtime threads = the container's CPU limit
    /models/bamsgan/N/             the exported version, exactly as `make export` wrote it

--source is one version directory as `make export` writes it, in one of three forms:
  - an http(s):// or file:// URL of a .tar.gz (or .tar) holding the directory N/
    (`tar -C model_repository/bamsgan -czf bamsgan-3.tar.gz 3`); --sha256 checks it
  - a .tar.gz / .tar path on a mounted volume (a PersistentVolumeClaim, NFS, ...)
  - the version directory itself on a mounted volume (.../bamsgan/3)
A version is complete when it has model.py, latents.py, metadata.json and every engine file its
metadata.json lists; anything else is refused with a one-line error (exit 1) before the
repository is touched, so a pod never starts serving half a model.

Standard library only: it runs in the serving image (NVIDIA's Triton container + the launcher),
as the init container of serving/k8s/base/deployment.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "model_repository" / "bamsgan" / "config.pbtxt"
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
VERSION_NAME = re.compile(r"[1-9][0-9]*")  # Triton's version directories: positive integers
DOWNLOAD_TIMEOUT_S = 60


class FetchError(RuntimeError):
    """A problem with the source or the target the user can fix; its message is one line."""


def download(url: str, destination: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(destination, "wb") as file:
            shutil.copyfileobj(response, file, length=1 << 20)
    except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
        raise FetchError(f"cannot download {url}: {getattr(error, 'reason', None) or error}") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under folder."""
    return {path.relative_to(folder).as_posix(): sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def unpack(archive: Path, destination: Path, source: str) -> Path:
    """Extract archive into destination; the one version directory N/ it holds."""
    if not hasattr(tarfile, "data_filter"):  # PEP 706: Python >= 3.10.12 / 3.11.4
        raise FetchError(f"this Python ({sys.version.split()[0]}) cannot extract archives safely; use a newer one")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")  # refuses absolute paths, .., links outside
    except (tarfile.TarError, OSError) as error:
        reason = str(error).splitlines()[0].rstrip(":")  # tarfile lists every method it tried, one per line
        raise FetchError(f"{source} is not a readable .tar.gz / .tar of a model version ({reason})") from None
    entries = [path for path in destination.iterdir()]
    if len(entries) != 1 or not entries[0].is_dir() or not VERSION_NAME.fullmatch(entries[0].name):
        names = ", ".join(sorted(path.name for path in entries)) or "nothing"
        raise FetchError(
            f"{source} must hold exactly one version directory named by its number (N/), found {names}; "
            "make it with: tar -C model_repository/bamsgan -czf bamsgan-N.tar.gz N"
        )
    return entries[0]


def check_version(version_dir: Path, source: str) -> None:
    """FetchError unless the directory holds a complete exported version (see the module docstring)."""
    metadata_path = version_dir / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
    except FileNotFoundError:
        raise FetchError(f"{source}: version {version_dir.name} has no metadata.json; is it a directory `make export` wrote?") from None
    except (OSError, ValueError) as error:
        raise FetchError(f"{source}: version {version_dir.name} has an unreadable metadata.json ({error})") from None
    engines = metadata.get("engines") if isinstance(metadata, dict) else None
    if not isinstance(engines, dict) or not engines.get("onnx"):
        raise FetchError(f"{source}: metadata.json of version {version_dir.name} names no ONNX generator (engines.onnx)")
    required = ["model.py", "latents.py", *(name for name in engines.values() if name)]
    missing = [name for name in required if not (version_dir / name).is_file()]
    if missing:
        raise FetchError(f"{source}: version {version_dir.name} is incomplete, missing {', '.join(missing)}")


def configure(config_text: str, instance_kind: str | None, ort_threads: int | None) -> str:
    """The tracked config.pbtxt with the pod's instance kind and ONNX Runtime thread count.

    Text substitution, not a protobuf round trip: the file keeps its comments (they explain it).
    """
    if instance_kind is not None:
        config_text, count = re.subn(r"\bkind:\s*KIND_[A-Z]+", f"kind: {instance_kind}", config_text)
        if count != 1:
            raise FetchError(f"config.pbtxt must have exactly one instance_group kind to set, found {count}")
    if ort_threads is not None:
        gap = r"(?:\s|#[^\n]*)*"  # blanks and comments between the tokens
        pattern = rf'(key:\s*"ort_threads"{gap}value:{gap}\{{{gap}string_value:\s*")[^"]*(")'
        config_text, count = re.subn(pattern, rf"\g<1>{ort_threads}\g<2>", config_text)
        if count != 1:
            raise FetchError(f"config.pbtxt must have exactly one ort_threads parameter to set, found {count}")
    return config_text


def fetch(source: str, to: Path, config: Path, expected_sha256: str | None = None,
          instance_kind: str | None = None, ort_threads: int | None = None, log=print) -> Path:
    """Fetch, check and install the version; returns to/<model>/N. Nothing is written on failure."""
    if not config.is_file():
        raise FetchError(f"model configuration {config} does not exist")
    model_name = config.parent.name
    config_text = configure(config.read_text(), instance_kind, ort_threads)
    to.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(source).scheme
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=to) as scratch:
        scratch = Path(scratch)
        if scheme in ("http", "https", "file"):
            archive = scratch / "version.tar"
            download(source, archive)
        elif Path(source).is_file():
            archive = Path(source)
        elif Path(source).is_dir():
            archive = None
        elif scheme:
            raise FetchError(f"--source {source}: use an http(s):// or file:// URL, or a path on a mounted volume")
        else:
            raise FetchError(f"--source {source} does not exist (a version directory, a .tar.gz, or a URL)")

        if archive is None:
            if expected_sha256:
                raise FetchError("--sha256 checks an archive; --source is a directory")
            if not VERSION_NAME.fullmatch(Path(source).name):
                raise FetchError(f"--source {source} must be a version directory named by its number (.../bamsgan/N)")
            version_dir = scratch / Path(source).name
            shutil.copytree(source, version_dir, symlinks=False)
        else:
            digest = sha256(archive)
            if expected_sha256 and digest != expected_sha256.strip().lower():
                raise FetchError(f"{source} has sha256 {digest}, expected {expected_sha256.strip().lower()}")
            log(f"fetched {source} ({archive.stat().st_size / 2**20:.1f} MiB, sha256 {digest})")
            version_dir = unpack(archive, scratch / "unpacked", source)
        check_version(version_dir, source)

        model_dir = to / model_name
        final, config_path = model_dir / version_dir.name, model_dir / "config.pbtxt"
        # An init container that runs again in the same pod finds its own earlier result: keep
        # it. Anything else already there is someone's, and is never overwritten.
        if final.exists() and file_digests(final) != file_digests(version_dir):
            raise FetchError(f"{final} already holds a different version {final.name}; not overwritten")
        if config_path.exists() and config_path.read_text() != config_text:
            raise FetchError(f"{config_path} already exists with other settings; not overwritten")
        model_dir.mkdir(exist_ok=True)
        if not final.exists():
            os.chmod(version_dir, 0o755)  # extracted or copied with the source's mode; Triton only reads
            os.rename(version_dir, final)
        if not config_path.exists():
            partial = model_dir / ".config.pbtxt.partial"
            partial.write_text(config_text)
            os.replace(partial, config_path)
    log(f"model repository {to}: {model_name} version {final.name}"
        + (f", {instance_kind}" if instance_kind else "") + (f", ort_threads {ort_threads}" if ort_threads is not None else ""))
    return final


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.k8s.fetch_model", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="URL or path of the exported version (see above)")
    parser.add_argument("--to", required=True, type=Path, help="model repository to fill (the pod's volume)")
    parser.add_argument("--sha256", default="", help="expected sha256 of the archive (empty: not checked)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the model's config.pbtxt (default: %(default)s)")
    parser.add_argument("--instance-kind", choices=INSTANCE_KINDS, default=None, help="set the instance_group kind")
    parser.add_argument("--ort-threads", type=int, default=None, help="set ONNX Runtime's CPU threads (0: one per core)")
    args = parser.parse_args(argv)
    if args.ort_threads is not None and args.ort_threads < 0:
        parser.error(f"--ort-threads must be >= 0, got {args.ort_threads}")
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256.strip()):
        parser.error(f"--sha256 must be 64 hex digits, got {args.sha256!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fetch(args.source, args.to, args.config, args.sha256 or None, args.instance_kind, args.ort_threads)
    except FetchError as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
