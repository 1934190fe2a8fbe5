"""The face explorer: a web page over the served `bamsgan` model (`make ui`).

    python -m clients.ui --url localhost:8001 --port 7860
    python -m clients.ui --url localhost:8001,localhost:8004      # replicas: failover as in clients.generate

Browse a grid of faces from a start seed, change the truncation, look at one face large, download
the grid as PNG, walk from seed A to seed B (an animation, downloadable as GIF), and read the
server's latency and batching figures (Triton's inference statistics). Every face comes from the
Triton server(s) over gRPC through clients.endpoints.EndpointPool and clients.generate, the same
client as `make generate`, so a face on the page is byte for byte the face `make generate` writes.

FastAPI with one static page (clients/ui_static/) rather than Gradio: the page needs five small
JSON/PNG routes and none of Gradio's widgets; FastAPI + uvicorn are a handful of small packages
(Gradio brings dozens), and every route is a plain HTTP call a test can make without a browser.

Bad input (a seed that is not a whole number in range, a truncation <= 0 or NaN, too many faces
or frames) gets HTTP 400 with {"error": one line}; a server that cannot be reached gets 503 with
the client's one-line reason; the page shows the line and stays usable.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import math
import re
import socket
import sys
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from tritonclient.utils import InferenceServerException

from clients.endpoints import DEFAULT_URL, MODEL, EndpointPool, TritonClientError, describe_error, endpoints_argument
from clients.generate import WALK_FPS, encode_gif, faces_from_pool, walk_from_pool
from training.latents import MAX_SEED, validate_truncation

STATIC = Path(__file__).resolve().parent / "ui_static"
DEFAULT_PORT = 7860
MAX_FACES = 64  # per grid: one page of faces, one batched request
MAX_FRAMES = 120  # per walk: 10 s at 12 frames per second
STATS_TIMEOUT_S = 2.0  # the server panel must not hang on a dead replica

log = logging.getLogger("clients.ui")


# ---------------------------------------------------------------------------------------------
# The page's inputs: text from the browser -> values, or ValueError with the line the page shows


WHOLE_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def parse_seed(text: str | None, name: str = "seed") -> int:
    text = (text or "").strip()
    if not WHOLE_NUMBER.fullmatch(text) or int(text) > MAX_SEED:
        raise ValueError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return int(text)


def parse_count(text: str | None, name: str, low: int, high: int) -> int:
    text = (text or "").strip()
    if not WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


def parse_truncation(text: str | None) -> float | None:
    """'' or 'none' -> None (no truncation); else a threshold > 0."""
    text = (text or "").strip().lower()
    if text in ("", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"truncation must be a number above 0 (e.g. 0.7), or empty for none, got {text!r}") from None
    if math.isinf(value):  # inf is no truncation: say so with an empty box (JSON has no inf to echo back)
        raise ValueError(f"truncation must be a finite number above 0, or empty for none, got {text!r}")
    return float(validate_truncation(value, 1)[0])  # NaN, <= 0: its own message


def grid_seeds(start: str | None, count: str | None) -> np.ndarray:
    first, number = parse_seed(start, "start seed"), parse_count(count, "the number of faces", 1, MAX_FACES)
    if first + number - 1 > MAX_SEED:
        raise ValueError(f"start seed + faces runs past the largest seed {MAX_SEED}")
    return np.arange(first, first + number, dtype=np.int64)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG: lossless, so the page's pixels are the served bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


# ---------------------------------------------------------------------------------------------
# Talking to Triton


class Explorer:
    """The page's view of the server(s): one EndpointPool for every route, connected on first use
    (the page comes up while Triton is still down, and says so)."""

    def __init__(self, urls: list[str] | str, model: str = MODEL, timeout: float = 30.0, retries: int = 2):
        self.pool = EndpointPool(urls, model, timeout, retries, log=log.warning)
        self._connect_lock = threading.Lock()

    def connect(self) -> None:
        with self._connect_lock:  # one probe round at a time; later calls return at once
            self.pool.connect()

    def faces(self, seeds: np.ndarray, truncation: float | None) -> np.ndarray:
        self.connect()
        return faces_from_pool(self.pool, seeds, truncation)

    def walk(self, seed_a: int, seed_b: int, frames: int, truncation: float | None) -> np.ndarray:
        self.connect()
        return walk_from_pool(self.pool, seed_a, seed_b, frames, truncation)

    def server(self) -> dict:
        """Per replica: up or why not, and Triton's statistics for the model since it started."""
        replicas = []
        for endpoint in self.pool.endpoints:
            try:
                stats = endpoint.client.get_inference_statistics(self.pool.model, as_json=True, client_timeout=STATS_TIMEOUT_S)
                replicas.append({"url": endpoint.url, "up": True, **summarize_statistics(stats)})
            except InferenceServerException as error:
                replicas.append({"url": endpoint.url, "up": False, "reason": describe_error(error, endpoint.url, STATS_TIMEOUT_S)})
        return {"model": self.pool.model, "replicas": replicas}

    def close(self) -> None:
        self.pool.close()


def summarize_statistics(stats: dict) -> dict:
    """Triton's inference statistics (as_json) of the served version(s) -> the panel's figures."""
    totals = {"requests": 0, "inferences": 0, "executions": 0, "cache_hits": 0}
    nanoseconds = {"latency": 0, "queue": 0, "compute": 0}
    batches: dict[int, int] = {}
    versions = []
    for model in stats.get("model_stats", []):
        versions.append(model.get("version", "?"))
        inference = model.get("inference_stats", {})
        totals["requests"] += int(inference.get("success", {}).get("count", 0))
        totals["inferences"] += int(model.get("inference_count", 0))
        totals["executions"] += int(model.get("execution_count", 0))
        totals["cache_hits"] += int(inference.get("cache_hit", {}).get("count", 0))
        nanoseconds["latency"] += int(inference.get("success", {}).get("ns", 0))
        nanoseconds["queue"] += int(inference.get("queue", {}).get("ns", 0))
        nanoseconds["compute"] += sum(int(inference.get(key, {}).get("ns", 0)) for key in ("compute_input", "compute_infer", "compute_output"))
        for batch in model.get("batch_stats", []):
            size = int(batch["batch_size"])
            batches[size] = batches.get(size, 0) + int(batch.get("compute_infer", {}).get("count", 0))
    requests, executions = totals["requests"], totals["executions"]
    per_request = (lambda ns: round(ns / requests / 1e6, 3)) if requests else (lambda ns: None)
    return {
        "versions": versions,
        **totals,
        "mean_batch": round(totals["inferences"] / executions, 2) if executions else None,
        "latency_ms": per_request(nanoseconds["latency"]),
        "queue_ms": per_request(nanoseconds["queue"]),
        "compute_ms": per_request(nanoseconds["compute"]),
        "batch_sizes": {str(size): count for size, count in sorted(batches.items())},
    }


# ---------------------------------------------------------------------------------------------
# The web app


def add_error_handlers(app: FastAPI) -> None:
    """Every failure is {"error": one line}: 400 bad input, 503 server(s) unreachable, 500 a bug (logged in full)."""

    @app.exception_handler(ValueError)
    async def bad_input(request: Request, error: ValueError):
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(TritonClientError)
    async def server_problem(request: Request, error: TritonClientError):
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"unexpected error: {type(error).__name__}: {error}"}, status_code=500)


def create_app(explorer: Explorer) -> FastAPI:
    app = FastAPI(title="BaMSGAN face explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/faces")
    def faces(start: str | None = None, count: str | None = None, truncation: str | None = None):
        seeds, threshold = grid_seeds(start, count), parse_truncation(truncation)
        images = explorer.faces(seeds, threshold)
        return {"seeds": [str(seed) for seed in seeds], "truncation": threshold,
                "images": [png_data_url(image) for image in images]}

    @app.get("/api/grid.png")
    def grid(start: str | None = None, count: str | None = None, truncation: str | None = None):
        from training.data.images import image_grid

        seeds, threshold = grid_seeds(start, count), parse_truncation(truncation)
        picture = png_bytes(image_grid(explorer.faces(seeds, threshold)))
        name = f"faces-{seeds[0]}-{seeds[-1]}" + (f"-t{threshold:g}" if threshold else "") + ".png"
        return Response(picture, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def walk_request(a, b, frames, truncation):
        return (parse_seed(a, "seed A"), parse_seed(b, "seed B"),
                parse_count(frames, "frames", 2, MAX_FRAMES), parse_truncation(truncation))

    @app.get("/api/walk")
    def walk(a: str | None = None, b: str | None = None, frames: str | None = None, truncation: str | None = None):
        seed_a, seed_b, count, threshold = walk_request(a, b, frames, truncation)
        images = explorer.walk(seed_a, seed_b, count, threshold)
        return {"a": str(seed_a), "b": str(seed_b), "fps": WALK_FPS, "frames": [png_data_url(image) for image in images]}

    @app.get("/api/walk.gif")
    def walk_gif(a: str | None = None, b: str | None = None, frames: str | None = None, truncation: str | None = None):
        seed_a, seed_b, count, threshold = walk_request(a, b, frames, truncation)
        name = f"walk-{seed_a}-{seed_b}-{count}" + (f"-t{threshold:g}" if threshold else "") + ".gif"
        return Response(encode_gif(explorer.walk(seed_a, seed_b, count, threshold)), media_type="image/gif",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/server")
    def server():
        return explorer.server()

    @app.get("/api/limits")
    def limits():
        return {"max_faces": MAX_FACES, "max_frames": MAX_FRAMES, "max_seed": str(MAX_SEED)}

    return app


def check_port_free(host: str, port: int) -> None:
    """A clear error now rather than uvicorn's traceback-like log after start-up."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port} ({error.strerror}); choose another port (UI_PORT=...)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", type=endpoints_argument, default=DEFAULT_URL,
                        help="Triton gRPC endpoint HOST:PORT, or replicas HOST:PORT,HOST:PORT,... (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address the page listens on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port the page listens on (default %(default)s)")
    parser.add_argument("--model", default=MODEL, help="served model name (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call (default %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535 or not args.timeout > 0 or math.isnan(args.timeout):
        parser.error("--port must be 1-65535 and --timeout > 0")
    try:
        check_port_free(args.host, args.port)
    except ValueError as error:
        parser.error(str(error))

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    explorer = Explorer(args.url, args.model, args.timeout)
    print(f"face explorer: http://{args.host}:{args.port}/  (Triton at {','.join(args.url)}; Ctrl-C stops it)", flush=True)
    try:
        uvicorn.run(create_app(explorer), host=args.host, port=args.port, log_level="warning")
    finally:
        explorer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
