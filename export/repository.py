"""Model repository writer: every export becomes a new numbered version of the served model.

model_repository/bamsgan/
  config.pbtxt   owned by serving (tracked in git); export only keeps its I/O dims and
                 max_batch_size in step with what it published, field by field
  N/             one export: model.py, latents.py, engines.py, generator.onnx, [generator_fp16.onnx],
                 [generator.plan], metadata.json

A version is written into a temporary directory beside the versions (`.partial-*`; Triton ignores
names that are not numbers) and renamed to the next free number, so Triton and other readers never
see half a version, and an existing version is never touched. Two exports racing for the same number:
rename onto a non-empty directory fails (ENOTEMPTY/EEXIST), and the loser takes the next number.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import py_compile
import re
import shutil
import tempfile
from pathlib import Path

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, MAX_BATCH_SIZE

ROOT = Path(__file__).resolve().parents[1]
BACKEND_SOURCE = ROOT / "serving" / "python_backend" / "model.py"
ENGINES_SOURCE = ROOT / "serving" / "python_backend" / "engines.py"  # model.py's engines, beside it
LATENTS_SOURCE = ROOT / "training" / "latents.py"
IMAGE_DIMS = [IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS]
DEFAULT_MAX_BATCH_SIZE = MAX_BATCH_SIZE


class RepositoryError(RuntimeError):
    """The model repository or the files a version needs are not as expected."""


def versions(model_dir: str | os.PathLike) -> list[int]:
    """Published version numbers under model_dir, ascending (Triton: positive integers, no leading 0)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9][0-9]*", p.name))


def check_backend_source(backend_source: str | os.PathLike = BACKEND_SOURCE) -> Path:
    backend_source = Path(backend_source)
    if not backend_source.is_file():
        raise RepositoryError(
            f"the Triton Python backend {backend_source} does not exist; a model version needs it as model.py "
            "(it belongs to serving/)"
        )
    return backend_source


def compile_python_sources(version_dir: Path) -> None:
    """Write the version's Python files' __pycache__ now, for this interpreter.

    Otherwise the Python backend writes them into the version directory when it first loads it,
    and the server's repository poll (serving/launcher.py) takes that for a change and reloads the
    model. A server on another Python (NVIDIA's image) still writes its own once.
    """
    for name in ("model.py", "latents.py", "engines.py"):
        source = version_dir / name
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)


def publish_version(
    model_dir: str | os.PathLike,
    artifacts: dict[str, str | os.PathLike],
    metadata: dict,
    backend_source: str | os.PathLike = BACKEND_SOURCE,
) -> Path:
    """Write a new version: artifacts ({name in the version: source file}), model.py, latents.py and
    metadata.json. Returns the version directory."""
    backend_source = check_backend_source(backend_source)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=model_dir))
    try:
        shutil.copyfile(backend_source, partial / "model.py")
        shutil.copyfile(LATENTS_SOURCE, partial / "latents.py")
        shutil.copyfile(backend_source.parent / "engines.py" if (backend_source.parent / "engines.py").is_file()
                        else ENGINES_SOURCE, partial / "engines.py")
        for name, source in artifacts.items():
            shutil.copyfile(source, partial / name)
        (partial / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        compile_python_sources(partial)
        for path in partial.rglob("*"):  # the data is on disk before the name appears
            if path.is_file():
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
        partial.chmod(0o755)  # mkdtemp makes it 0700; Triton may run as another user
        number = (versions(model_dir) or [0])[-1] + 1
        while True:
            final = model_dir / str(number)
            try:
                if final.exists():
                    raise FileExistsError(errno.EEXIST, "taken", str(final))
                os.rename(partial, final)
                return final
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number += 1  # taken meanwhile by another export
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# ---- config.pbtxt ----

MINIMAL_CONFIG = """\
# Created by `make export` because none existed; serving/ owns and tunes this file.
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{
    name: "SEED"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }},
  {{
    name: "TRUNCATION"
    data_type: TYPE_FP32
    dims: [ 1 ]
    optional: true
  }}
]
output [
  {{
    name: "IMAGE"
    data_type: TYPE_UINT8
    dims: [ {h}, {w}, {c} ]
  }}
]
dynamic_batching {{ }}
"""


def _parse_config(text: str, path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{path} is not a valid Triton model config: {error}") from None


def _tensor_block(text: str, section: str, name: str) -> tuple[int, int] | None:
    """(start, end) of the `{ ... }` block of tensor `name` inside `input [...]`/`output [...]`."""
    section_match = re.search(rf"^\s*{section}\s*:?\s*\[", text, re.MULTILINE)
    if not section_match:
        return None
    name_match = re.compile(rf'name\s*:\s*"{re.escape(name)}"').search(text, section_match.end())
    if not name_match:
        return None
    start = text.rfind("{", section_match.end(), name_match.start())
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return start, index + 1
    return None


def _set_in_block(text: str, block: tuple[int, int], field: str, value: str) -> str:
    """Set `field: value` inside text[block] (replace the first occurrence, or add it after `{`)."""
    start, end = block
    body = text[start:end]
    pattern = re.compile(rf"{field}\s*:\s*(\[[^\]]*\]|\S+)")
    if pattern.search(body):
        body = pattern.sub(f"{field}: {value}", body, count=1)
    else:
        body = "{" + f" {field}: {value}" + body[1:]
    return text[:start] + body + text[end:]


def sync_config(model_dir: str | os.PathLike, model_name: str, max_batch_limit: int | None = None) -> list[str]:
    """Keep model_dir/config.pbtxt in step with the export; returns what changed (in words).

    Checked: SEED INT64 dims [1], IMAGE UINT8 dims [64, 64, 3], 1 <= max_batch_size <= max_batch_limit
    (the TensorRT profile's max when a plan is published). Only a field out of step is rewritten,
    in place in the text (comments and the rest of the file stay as serving wrote them); the file is
    replaced atomically. A missing config gets the contract's minimal one.
    """
    path = Path(model_dir) / "config.pbtxt"
    limit = max_batch_limit or DEFAULT_MAX_BATCH_SIZE
    if not path.is_file():
        _write_atomic(path, MINIMAL_CONFIG.format(name=model_name, max_batch_size=min(limit, DEFAULT_MAX_BATCH_SIZE),
                                                  h=IMAGE_DIMS[0], w=IMAGE_DIMS[1], c=IMAGE_DIMS[2]))
        _parse_config(path.read_text(), path)
        return [f"created {path}"]

    from tritonclient.grpc import model_config_pb2

    text = path.read_text()
    config = _parse_config(text, path)
    dtype = model_config_pb2.DataType.Name
    wanted = {  # (section, tensor) -> (data_type, dims)
        ("input", "SEED"): ("TYPE_INT64", [1]),
        ("output", "IMAGE"): ("TYPE_UINT8", IMAGE_DIMS),
    }
    changes = []
    for (section, name), (data_type, dims) in wanted.items():
        tensors = {t.name: t for t in getattr(config, section)}
        if name not in tensors:
            raise RepositoryError(f"{path} has no {section} {name!r}; add it (see CONTRIBUTING.md) or delete the file to have export recreate it")
        tensor = tensors[name]
        block = _tensor_block(text, section, name)
        if block is None:
            raise RepositoryError(f"cannot locate the {section} {name!r} block in {path} to update it")
        if dtype(tensor.data_type) != data_type:
            text = _set_in_block(text, block, "data_type", data_type)
            changes.append(f"{name} data_type {dtype(tensor.data_type)} -> {data_type}")
            block = _tensor_block(text, section, name)
        if list(tensor.dims) != dims:
            text = _set_in_block(text, block, "dims", "[ " + ", ".join(map(str, dims)) + " ]")
            changes.append(f"{name} dims {list(tensor.dims)} -> {dims}")
    if not 1 <= config.max_batch_size <= limit:
        new = limit if config.max_batch_size > limit else min(limit, DEFAULT_MAX_BATCH_SIZE)
        line = re.compile(r"^(\s*max_batch_size\s*:\s*)-?\d+", re.MULTILINE)
        text = line.sub(rf"\g<1>{new}", text, count=1) if line.search(text) else f"max_batch_size: {new}\n" + text
        changes.append(f"max_batch_size {config.max_batch_size} -> {new}")
    if changes:
        updated = _parse_config(text, path)  # the edit must still be a valid config, with the fix
        check = {t.name: t for t in list(updated.input) + list(updated.output)}
        if list(check["IMAGE"].dims) != IMAGE_DIMS or list(check["SEED"].dims) != [1] or not 1 <= updated.max_batch_size <= limit:
            raise RepositoryError(f"could not update {path} in place; please fix: {'; '.join(changes)}")
        _write_atomic(path, text)
    return changes


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
