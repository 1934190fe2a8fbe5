"""Request faces by seed from the served `bamsgan` model and write them as PNGs.

    python -m clients.generate --url localhost:8001 --seeds 0-63 --out grid.png
    python -m clients.generate --seeds 3,7,40-47 --truncation 0.7 --each faces/

The server maps each seed to a latent (training.latents) and runs the generator, so the same
seed gives the same face from any client, in any batch. Requests are split into chunks of at
most the model's max_batch_size (read from the model config over gRPC). UNAVAILABLE and
RESOURCE_EXHAUSTED are retried with exponential backoff (a restarting server, a full queue);
every other error fails at once. `request_faces` is the reusable entry point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE
from training.latents import parse_seeds, validate_seeds, validate_truncation

MODEL = "bamsgan"
DEFAULT_URL = "localhost:8001"
RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
BACKOFF_S = 0.25  # first retry delay; doubles every retry


class TritonClientError(RuntimeError):
    """A one-line, user-facing error (server down, model missing, request rejected)."""


def normalize_url(url: str) -> str:
    """tritonclient wants HOST:PORT; accept grpc://HOST:PORT too."""
    return url.removeprefix("grpc://")


def call_with_retries(call, retries: int, backoff_s: float = BACKOFF_S):
    """Run call(); retry retryable gRPC errors `retries` times with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return call()
        except InferenceServerException as error:
            if error.status() not in RETRYABLE or attempt == retries:
                raise
            time.sleep(backoff_s * 2**attempt)


def describe_error(error: InferenceServerException, url: str, timeout: float | None) -> str:
    """The one-line message for a failed gRPC call."""
    status = str(error.status()).removeprefix("StatusCode.")
    if status == "UNAVAILABLE":
        return f"cannot reach Triton at {url} (UNAVAILABLE) — is `make serve` running?"
    if status == "DEADLINE_EXCEEDED":
        within = f" within {timeout:g} s" if timeout else ""
        return f"Triton at {url} did not answer{within} (DEADLINE_EXCEEDED); raise --timeout"
    return f"Triton at {url} failed the request ({status}): {error.message()}"


def served_models(client: grpcclient.InferenceServerClient, timeout: float | None = None) -> list[str]:
    """Names of the models in the server's repository, with their state when not READY."""
    index = client.get_model_repository_index(as_json=True, client_timeout=timeout).get("models", [])
    return sorted({m["name"] if m.get("state") == "READY" else f"{m['name']} ({m.get('state', '?')})" for m in index})


def model_config(client, url: str, model: str, timeout: float | None = None, retries: int = 0) -> dict:
    """The served model's config (dict); TritonClientError naming the served models if it is missing."""
    try:
        return call_with_retries(lambda: client.get_model_config(model, as_json=True, client_timeout=timeout), retries)["config"]
    except InferenceServerException as error:
        if error.status() != "StatusCode.NOT_FOUND" and "unknown model" not in error.message():
            raise TritonClientError(describe_error(error, url, timeout)) from None
        try:
            names = ", ".join(served_models(client, timeout)) or "none"
        except InferenceServerException:
            names = "unknown"
        raise TritonClientError(f"model '{model}' is not served at {url}; served models: {names}") from None


def max_batch_size(config: dict, model: str) -> int:
    size = int(config.get("max_batch_size", 0))
    if size < 1:
        raise TritonClientError(f"model '{model}' does not batch (max_batch_size {size}); expected SEED shaped [B, 1]")
    return size


def seed_inputs(seeds: np.ndarray, truncation: np.ndarray | None = None) -> list[grpcclient.InferInput]:
    """SEED INT64 [B, 1] and optional TRUNCATION FP32 [B, 1] request tensors."""
    seed_input = grpcclient.InferInput("SEED", [len(seeds), 1], "INT64")
    seed_input.set_data_from_numpy(np.ascontiguousarray(seeds, dtype=np.int64).reshape(-1, 1))
    inputs = [seed_input]
    if truncation is not None:
        truncation_input = grpcclient.InferInput("TRUNCATION", [len(seeds), 1], "FP32")
        truncation_input.set_data_from_numpy(np.ascontiguousarray(truncation, dtype=np.float32).reshape(-1, 1))
        inputs.append(truncation_input)
    return inputs


def request_faces(
    url: str,
    seeds,
    truncation=None,
    model: str = MODEL,
    timeout: float | None = 60.0,
    retries: int = 3,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Faces for `seeds` from the Triton server at `url`: uint8 [N, 64, 64, 3], in seed order.

    truncation: None, one threshold for all seeds, or one per seed (inf = untruncated).
    timeout: seconds per gRPC call (client_timeout). retries: for UNAVAILABLE/RESOURCE_EXHAUSTED.
    batch_size: request size; at most (and by default) the model's max_batch_size.
    Raises ValueError for bad seeds/truncation and TritonClientError for server-side problems.
    """
    url = normalize_url(url)
    seeds = validate_seeds(seeds)
    thresholds = None if truncation is None else validate_truncation(truncation, len(seeds)).astype(np.float32)
    images = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), np.uint8)
    if len(seeds) == 0:
        return images
    with grpcclient.InferenceServerClient(url) as client:
        limit = max_batch_size(model_config(client, url, model, timeout, retries), model)
        chunk = min(batch_size or limit, limit)
        outputs = [grpcclient.InferRequestedOutput("IMAGE")]
        starts = range(0, len(seeds), chunk)
        for start in tqdm(starts, desc="requests", unit="req", disable=not progress or len(starts) == 1):
            stop = min(start + chunk, len(seeds))
            inputs = seed_inputs(seeds[start:stop], None if thresholds is None else thresholds[start:stop])
            try:
                result = call_with_retries(lambda: client.infer(model, inputs, outputs=outputs, client_timeout=timeout), retries)
            except InferenceServerException as error:
                raise TritonClientError(describe_error(error, url, timeout)) from None
            chunk_images = result.as_numpy("IMAGE")
            if chunk_images is None or chunk_images.shape != images[start:stop].shape or chunk_images.dtype != np.uint8:
                got = None if chunk_images is None else f"{chunk_images.dtype} {list(chunk_images.shape)}"
                raise TritonClientError(f"model '{model}' returned IMAGE {got}, expected uint8 {list(images[start:stop].shape)}")
            images[start:stop] = chunk_images
    return images


def seed_filename(seed: int) -> str:
    return f"seed-{seed:06d}.png"


def seeds_argument(text: str) -> list[int]:
    """argparse type: '0-63', '3,7,40-47' -> validated list of seeds."""
    try:
        return validate_seeds(parse_seeds(text)).tolist()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def truncation_argument(text: str) -> float:
    """argparse type: a positive threshold ('inf' = no truncation)."""
    try:
        return float(validate_truncation(float(text), 1)[0])
    except ValueError as error:
        message = str(error) if "truncation" in str(error) else f"truncation must be a number, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC endpoint HOST:PORT (default %(default)s)")
    parser.add_argument("--seeds", type=seeds_argument, default="0-63", help="seeds and inclusive ranges, e.g. 0-63 or 3,7,40-47")
    parser.add_argument("--out", type=Path, help="write all faces as one grid PNG here")
    parser.add_argument("--each", type=Path, metavar="DIR", help="also write one PNG per seed (seed-000042.png) into DIR")
    parser.add_argument("--truncation", type=truncation_argument, help="truncation threshold > 0 (smaller = more typical faces)")
    parser.add_argument("--columns", type=int, help="grid columns (default: square-ish)")
    parser.add_argument("--model", default=MODEL, help="served model name (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per gRPC call (default %(default)s)")
    parser.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE/RESOURCE_EXHAUSTED (default %(default)s)")
    args = parser.parse_args(argv)
    if args.out is None and args.each is None:
        parser.error("nothing to write: give --out GRID.png and/or --each DIR")
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be >= 0 and --timeout > 0")

    try:
        images = request_faces(args.url, args.seeds, args.truncation, args.model, args.timeout, args.retries, progress=True)
    except (TritonClientError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from training.images import image_grid, save_png  # imports torch: only once there are faces to write

    written = []
    if args.out is not None:
        written.append(str(save_png(args.out, image_grid(images, args.columns))))
    if args.each is not None:
        for seed, image in zip(args.seeds, images):
            save_png(args.each / seed_filename(seed), image)
        written.append(f"{len(images)} PNGs in {args.each}/")
    print(f"{len(images)} faces from {args.model} at {normalize_url(args.url)} -> {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
