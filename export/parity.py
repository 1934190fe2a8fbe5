"""Parity: does an exported engine draw the same faces as the PyTorch generator?

Reference: the checkpoint's EMA generator as trained (unfolded: spectral norm and BatchNorm live,
eval mode, "reference" attention), fp32, float output. Each engine runs the fixed seeds 0..63
(training.latents.seeds_to_latents) at batch sizes 1, 7 and 64 (7 does not divide 64: a ragged last
batch). Figures per batch size and their worst case:
- float_max_abs_diff: max |engine - reference| of the float image in [-1, 1]. ONNX engines run with
  the generator's tanh output added as an extra graph output (`onnx_export.with_float_output`: the
  published nodes plus one Identity), so one run gives both the float image and the published uint8
  image, and no float-output twin of the model is exported. TensorRT engines report uint8 figures
  only (float null).
- uint8_max_diff, uint8_share_gt1, uint8_share_gt2: on the uint8 output `image` against
  training.data.images.to_uint8_nhwc(reference): the largest level difference and the share of pixel
  values off by more than 1 (resp. 2) levels. Off-by-one is expected: a float difference of 1e-7
  moves a value sitting on a .5 rounding boundary.

Thresholds (`THRESHOLDS`):
- fp32 (ONNX Runtime, TensorRT without FP16): float diff <= 1e-4 (1/40 of a uint8 level; measured
  ~1e-7) and share off by > 1 level <= 1e-4 (measured 0).
- fp16 (ONNX FP16 variant, TensorRT FP16): float diff <= 0.05 and share off by > 2 levels <= 1 %.
  Half precision keeps 11 significant bits, ~5e-4 relative per op; through five layers that is
  ~0.01 typical, so 0.05 (6 levels, locally) bounds the worst pixel while 1 % of values off by
  3+ levels is not visible in a 64x64 face. Attention and the uint8 tail stay in fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from training.data.images import to_uint8_nhwc
from training.latents import seeds_to_latents

PARITY_SEEDS = tuple(range(64))
BATCH_SIZES = (1, 7, 64)


class ParityError(RuntimeError):
    """An engine does not reproduce the PyTorch generator within its thresholds."""


@dataclass(frozen=True)
class Thresholds:
    float_max_abs_diff: float
    uint8_share_off: float  # max share of pixel values off by more than `uint8_levels`
    uint8_levels: int


THRESHOLDS = {
    "fp32": Thresholds(float_max_abs_diff=1e-4, uint8_share_off=1e-4, uint8_levels=1),
    "fp16": Thresholds(float_max_abs_diff=0.05, uint8_share_off=0.01, uint8_levels=2),
}


def parity_latents(z_dim: int) -> np.ndarray:
    return seeds_to_latents(PARITY_SEEDS, z_dim)


@torch.no_grad()
def reference_images(generator: torch.nn.Module, latents: np.ndarray) -> np.ndarray:
    """The PyTorch generator's float images [N, 3, 64, 64] for `latents`, one batch."""
    images = generator.eval()(torch.from_numpy(latents)).float().numpy()
    if not np.isfinite(images).all():
        raise ParityError("the generator's images contain NaN/inf for the parity seeds (diverged training?); nothing published")
    return images


def batched(run, latents: np.ndarray, batch_size: int) -> np.ndarray:
    """Concatenated run(latents[i:i + batch_size]) over all latents."""
    return np.concatenate([run(latents[i : i + batch_size]) for i in range(0, len(latents), batch_size)])


def figures(reference: np.ndarray, uint8_images: np.ndarray, float_images: np.ndarray | None) -> dict:
    """Parity figures of one engine run against the float reference [N, 3, 64, 64]."""
    expected = to_uint8_nhwc(torch.from_numpy(reference)).numpy().astype(np.int16)
    if uint8_images.shape != expected.shape or uint8_images.dtype != np.uint8:
        raise ParityError(f"engine returned {uint8_images.dtype} {list(uint8_images.shape)}, expected uint8 {list(expected.shape)}")
    level_diff = np.abs(uint8_images.astype(np.int16) - expected)
    return {
        "float_max_abs_diff": None if float_images is None else float(np.abs(float_images.astype(np.float32) - reference).max()),
        "uint8_max_diff": int(level_diff.max()),
        "uint8_share_gt1": float((level_diff > 1).mean()),
        "uint8_share_gt2": float((level_diff > 2).mean()),
    }


def summarise(per_batch: dict[int, dict], precision: str) -> dict:
    """Worst case over batch sizes, the thresholds used and the verdict (`passed`, `failures`)."""
    keys = ("float_max_abs_diff", "uint8_max_diff", "uint8_share_gt1", "uint8_share_gt2")
    worst = {}
    for key in keys:
        values = [f[key] for f in per_batch.values() if f[key] is not None]
        worst[key] = max(values) if values else None
    limits = THRESHOLDS[precision]
    share = worst[f"uint8_share_gt{limits.uint8_levels}"]
    failures = []
    if worst["float_max_abs_diff"] is not None and not worst["float_max_abs_diff"] <= limits.float_max_abs_diff:  # NaN fails
        failures.append(f"float max abs diff {worst['float_max_abs_diff']:.3g} > {limits.float_max_abs_diff:g}")
    if share > limits.uint8_share_off:
        failures.append(f"share of pixels off by > {limits.uint8_levels} levels {share:.3g} > {limits.uint8_share_off:g}")
    return {
        "precision": precision,
        "seeds": f"{PARITY_SEEDS[0]}-{PARITY_SEEDS[-1]}",
        "batch_sizes": {str(size): f for size, f in per_batch.items()},
        "worst": worst,
        "thresholds": asdict(limits),
        "passed": not failures,
        "failures": failures,
    }


def onnx_parity(model, reference: np.ndarray, latents: np.ndarray, precision: str, threads: int | None = None) -> dict:
    """Parity of an ONNX model (ModelProto) in ONNX Runtime CPU against the reference images."""
    import onnxruntime as ort

    from export.onnx_export import FLOAT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME, with_float_output

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs: no busy-waiting
    session = ort.InferenceSession(with_float_output(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    per_batch = {}
    for size in BATCH_SIZES:
        outputs = [session.run([OUTPUT_NAME, FLOAT_OUTPUT_NAME], {INPUT_NAME: latents[i : i + size]}) for i in range(0, len(latents), size)]
        uint8_images, float_images = (np.concatenate(parts) for parts in zip(*outputs))
        per_batch[size] = figures(reference, uint8_images, float_images)
    return summarise(per_batch, precision)


def engine_parity(run_uint8, reference: np.ndarray, latents: np.ndarray, precision: str) -> dict:
    """Parity of any engine given as run_uint8(latents [B, z] float32) -> uint8 [B, 64, 64, 3]."""
    per_batch = {size: figures(reference, batched(run_uint8, latents, size), None) for size in BATCH_SIZES}
    return summarise(per_batch, precision)


def format_table(results: dict[str, dict | None]) -> str:
    """One line per engine: worst-case figures and the verdict."""
    header = f"{'engine':<11} {'precision':<9} {'float max|d|':>12} {'uint8 max':>9} {'>1 level':>9} {'>2 levels':>9}  verdict"
    lines = [header, "-" * len(header)]
    for engine, result in results.items():
        if result is None:
            lines.append(f"{engine:<11} {'-':<9} {'-':>12} {'-':>9} {'-':>9} {'-':>9}  not built")
            continue
        worst = result["worst"]
        floats = "-" if worst["float_max_abs_diff"] is None else f"{worst['float_max_abs_diff']:.2e}"
        verdict = "pass" if result["passed"] else "FAIL: " + "; ".join(result["failures"])
        lines.append(
            f"{engine:<11} {result['precision']:<9} {floats:>12} {worst['uint8_max_diff']:>9} "
            f"{worst['uint8_share_gt1']:>9.2e} {worst['uint8_share_gt2']:>9.2e}  {verdict}"
        )
    return "\n".join(lines)
