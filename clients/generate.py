"""Request faces by seed from the served `bamsgan` model and write them as PNGs.

    python -m clients.generate --url localhost:8001 --seeds 0-63 --out grid.png
    python -m clients.generate --seeds 3,7,40-47 --truncation 0.7 --each faces/
    python -m clients.generate --url localhost:8001,localhost:8004 --seeds 0-999 --each faces/
    python -m clients.generate --seeds 3,17 --frames 48 --out walk.gif

The server maps each seed to a latent (training.latents) and runs the generator, so the same
seed gives the same face from any client, in any batch, from any replica. The seeds are split
into as many requests as there are requests in flight (`--concurrency`, default 2 per replica),
each at most the model's max_batch_size (read from the model config over gRPC), and spread over
the replicas in --url by clients.endpoints: a replica that is dead at start is skipped, one that
dies mid-run is marked down and its requests go to the others, RESOURCE_EXHAUSTED is backed off,
every other error fails at once (one line). Each request fills its own rows of the result, so
the faces are in seed order and byte-identical whichever replica answered.
`request_faces` is the reusable entry point; `walk_from_pool` asks for the frames of a walk
between two seeds (the served model's optional SEED_B and MIX inputs: training.latents.walk_mixes,
seed_pairs_to_latents), and `encode_gif` makes them an animation (clients.ui uses both).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

from clients.endpoints import (  # noqa: F401  (re-exported: benchmark and perf_analyzer import them from here)
    BACKOFF_S,
    DEFAULT_URL,
    MODEL,
    RETRYABLE,
    EndpointPool,
    TritonClientError,
    call_with_retries,
    deadline_parameters,
    describe_error,
    endpoints_argument,
    model_config,
    normalize_url,
    parse_endpoints,
    served_models,
)
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE
from training.latents import parse_seeds, validate_mix, validate_seeds, validate_truncation, walk_mixes

REQUESTS_PER_REPLICA = 2  # default requests in flight per replica: one computing, one on the wire
WALK_FPS = 12  # frames per second of a walk's GIF


def max_batch_size(config: dict, model: str) -> int:
    size = int(config.get("max_batch_size", 0))
    if size < 1:
        raise TritonClientError(f"model '{model}' does not batch (max_batch_size {size}); expected SEED shaped [B, 1]")
    return size


def seed_inputs(seeds: np.ndarray, truncation: np.ndarray | None = None, seeds_b: np.ndarray | None = None,
                mix: np.ndarray | None = None) -> list[grpcclient.InferInput]:
    """SEED INT64 [B, 1], optional TRUNCATION FP32 [B, 1], and for walk frames SEED_B INT64 [B, 1]
    with MIX FP32 [B, 1]."""
    inputs = []
    for name, values, datatype in (("SEED", seeds, "INT64"), ("TRUNCATION", truncation, "FP32"),
                                   ("SEED_B", seeds_b, "INT64"), ("MIX", mix, "FP32")):
        if values is None:
            continue
        tensor = grpcclient.InferInput(name, [len(seeds), 1], datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(values, dtype=np.int64 if datatype == "INT64" else np.float32).reshape(-1, 1))
        inputs.append(tensor)
    return inputs


def request_faces(
    url: str | list[str],
    seeds,
    truncation=None,
    model: str = MODEL,
    timeout: float | None = 60.0,
    retries: int = 3,
    batch_size: int | None = None,
    progress: bool = False,
    concurrency: int | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Faces for `seeds` from the Triton server(s) at `url`: uint8 [N, 64, 64, 3], in seed order.

    url: HOST:PORT, or several ('a:8001,b:8004' or a list): replicas of the same model version.
    truncation: None, one threshold for all seeds, or one per seed (inf = untruncated).
    timeout: seconds per gRPC call (client_timeout). retries: re-sends per request (failover to
    another replica, backoff on a full queue). batch_size: seeds per request (default: split
    evenly over the requests in flight), at most the model's max_batch_size. concurrency: requests
    in flight (default 2 per replica).
    log: gets one-line notes (a replica skipped at start, down, back).
    Raises ValueError for bad seeds/truncation/url and TritonClientError for server-side problems.
    """
    urls = parse_endpoints(url)
    seeds = validate_seeds(seeds)
    if truncation is not None:
        validate_truncation(truncation, len(seeds))
    if len(seeds) == 0:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), np.uint8)
    with EndpointPool(urls, model, timeout, retries, log=log) as pool:
        return faces_from_pool(pool, seeds, truncation, batch_size, progress, concurrency)


def faces_from_pool(pool: EndpointPool, seeds, truncation=None, batch_size: int | None = None, progress: bool = False,
                    concurrency: int | None = None, seeds_b=None, mix=None) -> np.ndarray:
    """request_faces over an open EndpointPool (connected here): its counts stay readable afterwards.

    seeds_b, mix (both or neither): face i is the point mix[i] of the walk from seeds[i] to seeds_b[i].
    """
    seeds = validate_seeds(seeds)
    thresholds = None if truncation is None else validate_truncation(truncation, len(seeds)).astype(np.float32)
    if (seeds_b is None) != (mix is None):
        raise ValueError("walk frames need both seeds_b and mix")
    if seeds_b is not None:
        seeds_b, mix = validate_seeds(seeds_b), validate_mix(mix, len(seeds)).astype(np.float32)
        if len(seeds_b) != len(seeds):
            raise ValueError(f"a walk needs as many B seeds as A seeds, got {len(seeds_b)} for {len(seeds)}")
    images = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), np.uint8)
    if len(seeds) == 0:
        return images
    model = pool.model
    limit = max_batch_size(pool.connect(), model)
    workers = max(1, concurrency or REQUESTS_PER_REPLICA * len(pool.endpoints))
    # By default as many requests as workers (within the model's limit), so every replica gets some.
    chunk = min(batch_size or -(-len(seeds) // workers), limit)
    outputs = [grpcclient.InferRequestedOutput("IMAGE")]

    def fetch(start: int) -> None:
        stop = min(start + chunk, len(seeds))
        part = slice(start, stop)
        inputs = seed_inputs(seeds[part], *(None if values is None else values[part] for values in (thresholds, seeds_b, mix)))
        result = pool.call(lambda client: client.infer(model, inputs, outputs=outputs, client_timeout=pool.timeout,
                                                       parameters=deadline_parameters(pool.timeout)))
        chunk_images = result.as_numpy("IMAGE")
        if chunk_images is None or chunk_images.shape != images[start:stop].shape or chunk_images.dtype != np.uint8:
            got = None if chunk_images is None else f"{chunk_images.dtype} {list(chunk_images.shape)}"
            raise TritonClientError(f"model '{model}' returned IMAGE {got}, expected uint8 {list(images[start:stop].shape)}")
        images[start:stop] = chunk_images  # each request fills its own rows: seed order whoever answers

    starts = range(0, len(seeds), chunk)
    with tqdm(total=len(starts), desc="requests", unit="req", disable=not progress or len(starts) == 1) as bar, \
            ThreadPoolExecutor(min(workers, len(starts)), thread_name_prefix="request") as executor:
        pending = {executor.submit(fetch, start) for start in starts}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            bar.update(len(done))
            failed = [future for future in done if future.exception() is not None]
            if failed:
                for future in pending:  # those not started yet; the ones in flight end within the timeout
                    future.cancel()
                raise failed[0].exception()
    return images


def walk_from_pool(pool: EndpointPool, seed_a: int, seed_b: int, frames: int, truncation=None, **options) -> np.ndarray:
    """The `frames` faces of the walk from seed_a to seed_b (both ends included): uint8 [frames, 64, 64, 3]."""
    mixes = walk_mixes(frames)
    return faces_from_pool(pool, np.full(frames, seed_a), truncation, seeds_b=np.full(frames, seed_b), mix=mixes, **options)


def gif_frame_ms(fps: float) -> int:
    """A GIF frame's display time: GIF counts in hundredths of a second."""
    return 10 * max(1, round(100 / fps))


def encode_gif(frames: np.ndarray, fps: float = WALK_FPS) -> bytes:
    """uint8 [N, H, W, 3] frames -> an endlessly looping animated GIF (each frame its own 256-colour palette)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=gif_frame_ms(fps), loop=0)
    return buffer.getvalue()


def save_gif(path: Path, frames: np.ndarray, fps: float = WALK_FPS) -> Path:
    """Write `frames` as an animated GIF atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(encode_gif(frames, fps))
    os.replace(partial, path)
    return path


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
    parser.add_argument("--url", type=endpoints_argument, default=DEFAULT_URL,
                        help="Triton gRPC endpoint HOST:PORT, or replicas HOST:PORT,HOST:PORT,... (default %(default)s)")
    parser.add_argument("--seeds", type=seeds_argument, default="0-63", help="seeds and inclusive ranges, e.g. 0-63 or 3,7,40-47")
    parser.add_argument("--out", type=Path, help="write all faces as one grid PNG here")
    parser.add_argument("--each", type=Path, metavar="DIR", help="also write one PNG per seed (seed-000042.png) into DIR")
    parser.add_argument("--truncation", type=truncation_argument, help="truncation threshold > 0 (smaller = more typical faces)")
    parser.add_argument("--columns", type=int, help="grid columns (default: square-ish)")
    parser.add_argument("--frames", type=int, help="walk from the first seed to the second in this many frames (>= 2): "
                        "--out WALK.gif animates it, --out WALK.png tiles it, --each writes frame-0000.png, ...")
    parser.add_argument("--fps", type=float, default=WALK_FPS, help="frames per second of a walk GIF (default %(default)s)")
    parser.add_argument("--model", default=MODEL, help="served model name (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per gRPC call (default %(default)s)")
    parser.add_argument("--retries", type=int, default=3,
                        help="re-sends per request: to another replica when one is down, after a backoff on a full queue (default %(default)s)")
    parser.add_argument("--concurrency", type=int, help=f"requests in flight (default {REQUESTS_PER_REPLICA} per replica)")
    args = parser.parse_args(argv)
    if args.out is None and args.each is None:
        parser.error("nothing to write: give --out GRID.png and/or --each DIR")
    if args.retries < 0 or args.timeout <= 0 or (args.concurrency is not None and args.concurrency < 1):
        parser.error("--retries must be >= 0, --timeout > 0 and --concurrency >= 1")
    if args.frames is not None and (len(args.seeds) != 2 or args.frames < 2 or not args.fps > 0):
        parser.error(f"a walk needs exactly two seeds (--seeds A,B; got {len(args.seeds)}), --frames >= 2 and --fps > 0")

    try:
        with EndpointPool(args.url, args.model, args.timeout, args.retries, log=lambda line: tqdm.write(line, file=sys.stderr)) as pool:
            if args.frames is None:
                images = faces_from_pool(pool, args.seeds, args.truncation, progress=True, concurrency=args.concurrency)
            else:
                images = walk_from_pool(pool, *args.seeds, args.frames, args.truncation, progress=True, concurrency=args.concurrency)
    except (TritonClientError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from training.data.images import image_grid, save_png  # imports torch: only once there are faces to write

    written = []
    if args.out is not None and args.frames is not None and args.out.suffix.lower() == ".gif":
        written.append(str(save_gif(args.out, images, args.fps)))
    elif args.out is not None:
        written.append(str(save_png(args.out, image_grid(images, args.columns))))
    if args.each is not None:
        names = [seed_filename(seed) for seed in args.seeds] if args.frames is None else [f"frame-{i:04d}.png" for i in range(len(images))]
        for name, image in zip(names, images):
            save_png(args.each / name, image)
        written.append(f"{len(images)} PNGs in {args.each}/")
    what = "faces" if args.frames is None else f"frames of the walk {args.seeds[0]} -> {args.seeds[1]}"
    print(f"{len(images)} {what} from {args.model} at {','.join(args.url)} -> {' and '.join(written)}")
    if len(args.url) > 1 or pool.resent:
        print(pool.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
