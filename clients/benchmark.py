"""Load generator for the served `bamsgan` model: throughput, latency percentiles, server breakdown.

    python -m clients.benchmark --url localhost:8001 --out out/bench \
        --batch-sizes 1,16,64,256 --concurrency 1,4,16 [--rate 2,8] [--compare-raw model_repository]

Method (the same as perf_analyzer's, so the two can be compared):
- Closed loop: C coroutines each keep one request in flight (concurrency C). Open loop: requests
  start at Poisson arrival times at rate R req/s whatever the server does; latency counts from
  the *scheduled* start, so a slow server cannot hide its queueing (no coordinated omission).
- Each request asks for B distinct seeds (a global counter), so the server computes every face.
- Each request carries its deadline (--timeout) as the `deadline_unix_ms` parameter (clients.endpoints).
- After --warmup seconds, measurement windows are repeated until the last three agree (max/min
  of throughput and of mean latency within 1 + --stability) or --max-windows; figures are over
  those last windows. A request belongs to the window in which it completes. A window lasts
  --window seconds and, beyond that, until --min-requests requests have completed in it (like
  perf_analyzer's count windows): at batch 256 a 3 s window holds ~17 requests, so one request
  more or less would move its throughput by 6 %. In open loop at rate R that makes a window at
  least --min-requests / R seconds long.
- Server side: deltas of Triton's statistics (get_inference_statistics) over the same windows:
  per-request queue / compute input / infer / output time and the average executed batch size
  (inference_count / execution_count), so client latency minus server time = transport cost.
- The client must not be the bottleneck: asyncio with tritonclient.grpc.aio, requests spread
  round-robin over --connections separate client objects per replica (each its own gRPC channel
  and TCP connection), and the client's own CPU use (process CPU seconds / wall seconds) is
  reported per config; in open loop also the send lag (actual minus scheduled start).
- Replicas (--url a,b,...; clients.endpoints): each request goes to the live replica with the
  fewest requests in flight; one that fails because its replica is down is re-sent to another
  (--retries; latency still counts from the first send, `resent` counts them), while a refusal
  of a live server (full queue: RESOURCE_EXHAUSTED or the queue policy's UNAVAILABLE) is never
  retried: it is an error, as with one server. Server statistics are summed over the replicas
  (a down replica keeps its last figures).
- --compare-raw measures the same exported engine in-process (training.latents.seeds_to_latents
  + ONNX Runtime with the server's ort_threads) right after the served runs of each batch size,
  when the server is idle (on a small machine they must not share the CPU), and prints served/raw
  images/s per batch size.

Writes results.json, results.csv and latency_throughput.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import itertools
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from clients.endpoints import EndpointPool, channel_args, deadline_parameters, endpoints_argument
from clients.generate import DEFAULT_URL, MODEL, TritonClientError, max_batch_size, seed_inputs
from serving.python_backend.engines import DEFAULT_ORT_THREADS, ort_session_options
from training.constants import Z_DIM
from training.latents import seeds_to_latents

PERCENTILES = (50, 90, 95, 99)
STABLE_WINDOWS = 3  # like perf_analyzer: the last three windows must agree
STATS_TIMEOUT_S = 10.0  # per statistics call: a stalled replica must not hold up a window
CLIENT_CPU_WARNING = 0.7  # of one core: above this the single-threaded event loop may be what limits throughput


@dataclass(frozen=True)
class LoadConfig:
    batch_size: int
    mode: str  # "concurrency" (closed loop) or "rate" (open loop, Poisson arrivals)
    level: float  # concurrency, or requests/s

    @property
    def label(self) -> str:
        return f"b={self.batch_size} c={self.level:g}" if self.mode == "concurrency" else f"b={self.batch_size} r={self.level:g}/s"


class SeedCounter:
    """Hands out distinct seeds: every request computes new faces. With `pool`, seeds cycle through
    start .. start+pool-1 instead, so requests repeat and the server's response cache can answer."""

    def __init__(self, start: int = 0, pool: int | None = None):
        self.start, self.next, self.pool = start, 0, pool

    def take(self, count: int) -> np.ndarray:
        offsets = np.arange(self.next, self.next + count, dtype=np.int64)
        self.next += count
        return self.start + (offsets % self.pool if self.pool else offsets)


def make_clients(url: str, count: int) -> list[aioclient.InferenceServerClient]:
    """`count` aio clients, each with its own channel and TCP connection (local subchannel pool)."""
    options = channel_args() + [("grpc.use_local_subchannel_pool", 1)]  # otherwise channels to one target share a connection
    return [aioclient.InferenceServerClient(url, channel_args=options) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# Server statistics


def _counter(stats: dict, name: str) -> tuple[int, int]:
    entry = stats.get("inference_stats", {}).get(name, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def sum_totals(totals: list[dict]) -> dict:
    """Statistics of several replicas as if of one server."""
    summed: dict = {}
    for one in totals:
        for key, value in one.items():
            summed[key] = summed.get(key, 0) + value
    return summed


def stats_totals(response: dict) -> dict:
    """Sum Triton's cumulative model statistics over the model's versions."""
    totals = {"inference_count": 0, "execution_count": 0}
    for stats in response.get("model_stats", []):
        totals["inference_count"] += int(stats.get("inference_count", 0))
        totals["execution_count"] += int(stats.get("execution_count", 0))
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
            count, ns = _counter(stats, name)
            totals[f"{name}_count"] = totals.get(f"{name}_count", 0) + count
            totals[f"{name}_ns"] = totals.get(f"{name}_ns", 0) + ns
    return totals


def server_breakdown(before: dict, after: dict) -> dict:
    """Per-request server-side times (us) and average executed batch size between two snapshots."""
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}

    def per_request_us(name: str) -> float | None:
        count = delta.get(f"{name}_count", 0)
        return delta[f"{name}_ns"] / count / 1e3 if count else None

    executions = delta["execution_count"]
    return {
        "requests": delta.get("success_count", 0),
        "failures": delta.get("fail_count", 0),
        "request_us": per_request_us("success"),
        "queue_us": per_request_us("queue"),
        "compute_input_us": per_request_us("compute_input"),
        "compute_infer_us": per_request_us("compute_infer"),
        "compute_output_us": per_request_us("compute_output"),
        "executions": executions,
        "avg_batch_size": delta["inference_count"] / executions if executions else None,
        # Triton's response cache (config.pbtxt response_cache): hits never reach the model.
        "cache_hits": delta.get("cache_hit_count", 0),
        "cache_misses": delta.get("cache_miss_count", 0),
        "cache_hit_us": per_request_us("cache_hit"),
        "cache_miss_us": per_request_us("cache_miss"),
    }


# ---------------------------------------------------------------------------------------------
# One load configuration


@dataclass
class Snapshot:
    time: float  # perf_counter
    cpu: float  # this process's CPU seconds (all threads, gRPC's included)
    server: dict
    completed: int  # number of completion records up to `time`
    resent: int  # requests re-sent after their replica failed, up to `time`


def stable(values: list[float], tolerance: float) -> bool:
    """perf_analyzer's rule: max / min of the recent windows within 1 + tolerance."""
    return min(values) > 0 and max(values) / min(values) <= 1 + tolerance


def raise_if_load_failed(load: list[asyncio.Task]) -> None:
    """A load task only ends early by an error other than a request's own (those are counted): raise it."""
    for task in load:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


class LoadRun:
    """One configuration's load: sends its requests, records each completion, snapshots the server statistics.

    Completions are recorded in completion order, so the requests completed between two snapshots
    are a slice of the records (Snapshot.completed).
    """

    def __init__(self, config: LoadConfig, pool: EndpointPool, clients: dict, stats_clients: dict, model: str,
                 seeds: SeedCounter, args):
        self.config, self.pool, self.stats_clients, self.model = config, pool, stats_clients, model
        self.seeds, self.args = seeds, args
        self.ends: list[float] = []  # completion times, appended in completion order (monotonic)
        self.latencies: list[float] = []  # seconds, from the scheduled/actual start
        self.failures: list[str] = []  # per completion: "" or the gRPC status
        self.send_lags: list[tuple[float, float]] = []  # open loop: (scheduled start, actual - scheduled)
        self.outputs = [grpcclient.InferRequestedOutput("IMAGE")]
        self.client_cycles = {url: itertools.cycle(replica_clients) for url, replica_clients in clients.items()}
        self.replica_totals: dict[str, dict] = {}  # the last statistics of each replica
        self.stop = asyncio.Event()

    async def one_request(self, scheduled: float) -> None:
        """Send one request of fresh seeds; record its completion, its latency from `scheduled` and its status."""
        inputs = seed_inputs(self.seeds.take(self.config.batch_size))
        timeout = self.args.timeout
        status = ""
        try:
            await self.pool.acall(lambda endpoint: next(self.client_cycles[endpoint.url]).infer(
                self.model, inputs, outputs=self.outputs, client_timeout=timeout, parameters=deadline_parameters(timeout)))
        except TritonClientError as error:
            status = error.status or str(error)
        end = time.perf_counter()
        self.ends.append(end)
        self.latencies.append(end - scheduled)
        self.failures.append(status)

    async def closed_loop_worker(self) -> None:
        """Keep one request in flight until stopped."""
        while not self.stop.is_set():
            await self.one_request(time.perf_counter())

    async def open_loop_scheduler(self, rate: float) -> None:
        """Start requests at Poisson arrival times, `rate` per second, whatever the server does."""
        rng = np.random.default_rng()
        in_flight: set[asyncio.Task] = set()
        scheduled = time.perf_counter()
        while not self.stop.is_set():
            scheduled += rng.exponential(1.0 / rate)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send_lags.append((scheduled, time.perf_counter() - scheduled))
            task = asyncio.create_task(self.one_request(scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)

    def start(self) -> list[asyncio.Task]:
        """The load's tasks: C closed-loop workers, or one open-loop scheduler."""
        if self.config.mode == "concurrency":
            return [asyncio.create_task(self.closed_loop_worker()) for _ in range(int(self.config.level))]
        return [asyncio.create_task(self.open_loop_scheduler(self.config.level))]

    async def snapshot(self) -> Snapshot:
        """The time, this process's CPU time, the replicas' summed statistics and the completions so far."""
        now, cpu = time.perf_counter(), time.process_time()
        for endpoint in self.pool.live():  # a replica that is down keeps its last figures
            try:
                response = await self.stats_clients[endpoint.url].get_inference_statistics(
                    self.model, as_json=True, client_timeout=min(self.args.timeout, STATS_TIMEOUT_S))
            except InferenceServerException:
                continue
            self.replica_totals[endpoint.url] = stats_totals(response)
        return Snapshot(now, cpu, sum_totals(list(self.replica_totals.values())), bisect.bisect_right(self.ends, now), self.pool.resent)

    def completed_between(self, first: Snapshot, last: Snapshot) -> tuple[list[float], list[str]]:
        """(latencies, statuses) of the requests completed between two snapshots."""
        return self.latencies[first.completed : last.completed], self.failures[first.completed : last.completed]


def successful(latencies: list[float], statuses: list[str]) -> list[float]:
    """The latencies of the requests that succeeded."""
    return [lat for lat, status in zip(latencies, statuses) if not status]


async def run_config(config: LoadConfig, pool: EndpointPool, clients: dict, stats_clients: dict, model: str,
                     seeds: SeedCounter, args, bar) -> dict:
    """Drive one configuration; measure windows until stable; return its figures.

    clients: {replica url: [aio clients]} for the requests; stats_clients: {replica url: aio client}.
    """
    run = LoadRun(config, pool, clients, stats_clients, model, seeds, args)
    load = run.start()
    try:
        snapshots, windows, is_stable = await measure_windows(run, load, args, bar)
    finally:
        run.stop.set()
        await asyncio.gather(*load, return_exceptions=True)  # lets in-flight requests finish
    return config_result(run, snapshots, windows, is_stable)


async def measure_windows(run: LoadRun, load: list[asyncio.Task], args, bar) -> tuple[list[Snapshot], list[tuple[float, float]], bool]:
    """After the warm-up, windows until the last STABLE_WINDOWS agree or --max-windows:
    (snapshots at the window edges, per window (requests/s, mean latency), whether stable)."""
    await asyncio.sleep(args.warmup)
    snapshots = [await run.snapshot()]
    windows = []  # per window: requests/s and mean latency
    while True:
        await wait_for_window_end(run, load, snapshots[-1], args)
        raise_if_load_failed(load)
        snapshots.append(await run.snapshot())
        first, last = snapshots[-2], snapshots[-1]
        ok = successful(*run.completed_between(first, last))
        windows.append((len(ok) / (last.time - first.time), float(np.mean(ok)) if ok else 0.0))
        bar.set_postfix_str(f"{run.config.label} window {len(windows)}: {windows[-1][0] * run.config.batch_size:.1f} img/s")
        recent = windows[-STABLE_WINDOWS:]
        is_stable = len(recent) == STABLE_WINDOWS and stable([w[0] for w in recent], args.stability) and stable([w[1] for w in recent], args.stability)
        if is_stable or len(windows) >= args.max_windows:
            return snapshots, windows, is_stable


async def wait_for_window_end(run: LoadRun, load: list[asyncio.Task], start: Snapshot, args) -> None:
    """Sleep out the --window that began at `start`, then stretch it to --min-requests completions."""
    await asyncio.sleep(max(0.0, start.time + args.window - time.perf_counter()))
    # Stretch to --min-requests completions, but never past the time by which every request
    # sent in the window has answered or timed out (a stalled server), nor once the load died.
    stretch_until = start.time + args.window + args.timeout
    while (len(run.ends) - start.completed < args.min_requests and time.perf_counter() < stretch_until
           and not any(task.done() for task in load)):
        await asyncio.sleep(0.005)


def config_result(run: LoadRun, snapshots: list[Snapshot], windows: list[tuple[float, float]], is_stable: bool) -> dict:
    """One configuration's figures over its last (up to STABLE_WINDOWS) windows."""
    config = run.config
    used = min(STABLE_WINDOWS, len(windows))
    first, last = snapshots[-1 - used], snapshots[-1]
    duration = last.time - first.time
    latencies, statuses = run.completed_between(first, last)
    errors = [status for status in statuses if status]
    # Throughput and latency count successful requests; failed ones are reported as errors.
    measured = np.asarray(successful(latencies, statuses)) * 1e3
    requests = len(measured)
    lags = [lag for scheduled, lag in run.send_lags if first.time <= scheduled <= last.time]
    percentiles = np.percentile(measured, PERCENTILES) if requests else [float("nan")] * len(PERCENTILES)
    return {
        "batch_size": config.batch_size,
        "mode": config.mode,
        "concurrency": int(config.level) if config.mode == "concurrency" else None,
        "rate": config.level if config.mode == "rate" else None,
        "windows": len(windows),
        "windows_used": used,
        "stable": is_stable,
        "duration_s": duration,
        "requests": requests,
        "images": requests * config.batch_size,
        "requests_per_s": requests / duration,
        "images_per_s": requests * config.batch_size / duration,
        **{f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, percentiles)},
        "mean_ms": float(measured.mean()) if requests else float("nan"),
        "max_ms": float(measured.max()) if requests else float("nan"),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "resent": last.resent - first.resent,  # sent again to another replica after theirs failed
        # How fast a refusal comes (a full queue / the queue policy's timeout): p99 of failed requests.
        "error_p99_ms": float(np.percentile([lat for lat, status in zip(latencies, statuses)
                                             if status], 99) * 1e3) if errors else None,
        "client_cpu": (last.cpu - first.cpu) / duration,  # cores used by this process
        "send_lag_p99_ms": float(np.percentile(lags, 99) * 1e3) if lags else None,
        "server": server_breakdown(first.server, last.server),
    }


# ---------------------------------------------------------------------------------------------
# Lone requests: one client, one seed, one request at a time. They guard against the lone-request
# stall: with a queue policy in config.pbtxt, Triton's dynamic batcher let a lone client's requests
# wait ~500 ms each instead of ~2 ms (see model_repository/bamsgan/config.pbtxt).


LONE_REQUESTS = 300  # sequential one-seed requests of the lone-request check
LONE_LIMIT_MS = 250  # a lone request takes ~1-2 ms; Triton's batcher stall (config.pbtxt) is ~500 ms


def sequential_latencies(url: str, model: str = MODEL, count: int = LONE_REQUESTS, first_seed: int = 0,
                         timeout: float = 10.0) -> np.ndarray:
    """Milliseconds of `count` one-seed requests sent one after another, each as soon as the last answered.

    A bare gRPC stub with one prepared request (only the seed bytes change), so the client turns
    around as fast as perf_analyzer's: the batcher stall this looks for needs the next request to
    arrive while the instance is still returning from the last one.
    """
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    seed = request.inputs.add(name="SEED", datatype="INT64")
    seed.shape.extend([1, 1])
    request.outputs.add(name="IMAGE")
    request.raw_input_contents.append(b"")
    latencies = []
    with grpc.insecure_channel(url, options=channel_args()) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for index in range(count):
            request.raw_input_contents[0] = np.int64(first_seed + index).tobytes()  # a new face each time
            start = time.perf_counter()
            infer(request, timeout=timeout)
            latencies.append(time.perf_counter() - start)
    return np.asarray(latencies) * 1e3


def lone_request_report(url: str, model: str, results: list[dict], raw: list[dict], first_seed: int) -> dict:
    """The lone-request figures: LONE_REQUESTS sequential requests, and the sweep's b1 c1 against raw b1.

    A failed call (a replica restarting, a loaded server past the timeout) is reported, not raised:
    the sweep before it is kept."""
    import grpc

    try:
        latencies = sequential_latencies(url, model, LONE_REQUESTS, first_seed)
    except grpc.RpcError as error:
        return {"unavailable": f"{error.code().name}: {error.details()}"}
    report = {"requests": len(latencies), "p50_ms": float(np.median(latencies)), "p99_ms": float(np.percentile(latencies, 99)),
              "max_ms": float(latencies.max()), "over_limit": int((latencies > LONE_LIMIT_MS).sum()), "limit_ms": LONE_LIMIT_MS}
    c1 = next((r for r in results if r["batch_size"] == 1 and r["mode"] == "concurrency" and r["concurrency"] == 1), None)
    raw_b1 = next((r for r in raw if r["batch_size"] == 1), None)
    if c1:
        report["c1_p99_ms"] = c1["p99_ms"]
        report["c1_cache_lookups"] = c1["server"]["cache_hits"] + c1["server"]["cache_misses"]
        if raw_b1:
            report["c1_served_vs_raw"] = c1["images_per_s"] / raw_b1["images_per_s"]
    return report


def format_lone(report: dict) -> str:
    if "unavailable" in report:
        return f"lone requests: not measured ({report['unavailable']})"
    lines = [f"lone requests ({report['requests']} sequential, one seed each): p50 {report['p50_ms']:.2f} ms, "
             f"p99 {report['p99_ms']:.2f} ms, max {report['max_ms']:.1f} ms, {report['over_limit']} over {report['limit_ms']} ms"]
    if "c1_p99_ms" in report:
        ratio = f", served/raw {report['c1_served_vs_raw']:.2f}" if "c1_served_vs_raw" in report else ""
        cache = (f" (response cache on: {report['c1_cache_lookups']} lookups; `make serve CACHE_MIB=0` for cache-off figures)"
                 if report["c1_cache_lookups"] else " (cache off)")
        lines.append(f"batch 1, concurrency 1: p99 {report['c1_p99_ms']:.2f} ms{ratio}{cache}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Raw engine (in-process ONNX Runtime), for the serving overhead ratio


def find_engine(path: Path, model: str, served_versions: list[str]) -> tuple[Path, Path | None]:
    """(generator.onnx, config.pbtxt or None) from an explicit .onnx or a model repository."""
    if path.suffix == ".onnx":
        if not path.is_file():
            raise TritonClientError(f"no ONNX file at {path}")
        return path, None
    model_dir = path / model if (path / model).is_dir() else path
    versions = sorted(int(d.name) for d in model_dir.glob("[0-9]*") if d.name.isdigit() and (d / "generator.onnx").is_file())
    if not versions:
        raise TritonClientError(f"no version with generator.onnx under {model_dir} (run `make export`)")
    served = [int(v) for v in served_versions if v.isdigit() and int(v) in versions]
    version_dir = model_dir / str(max(served) if served else max(versions))  # the served one when we can tell
    metadata = version_dir / "metadata.json"
    name = (json.loads(metadata.read_text()).get("engines") or {}).get("onnx") if metadata.is_file() else None
    config = model_dir / "config.pbtxt"
    return version_dir / (name or "generator.onnx"), config if config.is_file() else None


def ort_threads(live_config: dict, config_pbtxt: Path | None) -> int:
    """The server's ONNX Runtime intra-op threads: parameter ort_threads of the served config (else of
    config.pbtxt), else the engines' default. 0 means ONNX Runtime's default (one per core), as served."""
    value = live_config.get("parameters", {}).get("ort_threads", {}).get("string_value")
    if value is None and config_pbtxt is not None:
        match = re.search(r'key:\s*"ort_threads"\s*value:\s*\{\s*string_value:\s*"(\d+)"', config_pbtxt.read_text())
        value = match and match[1]
    return int(value) if value not in (None, "") else DEFAULT_ORT_THREADS


def open_raw_session(onnx_path: Path, threads: int, announce: bool = True):
    """The served engine in this process: ONNX Runtime with the served engine's session options
    (serving/python_backend/engines.py, which every model version carries), so raw = served engine."""
    import onnxruntime as ort

    options = ort_session_options(threads)
    # ONNX Runtime's CUDA provider where this host has it (the served model's GPU fallback engine);
    # a served TensorRT plan is not what this measures, and the report names the provider used.
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    if announce:
        print(f"raw baseline: {onnx_path} on {session.get_providers()[0]}", file=sys.stderr)
    return session


def measure_raw(session, batch_size: int, threads: int, args, seeds: SeedCounter, bar) -> dict:
    """In-process images/s of latents + ONNX Runtime at one batch size: the work the server does
    per request. Same warm-up, --window and stability rule as the served runs (no --min-requests:
    the figure comes from summed run times, so it has no counting granularity)."""
    input_name = session.get_inputs()[0].name

    def run_once() -> float:
        start = time.perf_counter()
        session.run(None, {input_name: seeds_to_latents(seeds.take(batch_size), Z_DIM)})
        return time.perf_counter() - start

    warm_until = time.perf_counter() + args.warmup
    run_once()
    while time.perf_counter() < warm_until:
        run_once()
    windows, durations = [], []
    while True:
        window = []
        window_end = time.perf_counter() + args.window
        while time.perf_counter() < window_end or not window:
            window.append(run_once())
        windows.append(len(window) * batch_size / sum(window))
        durations.append(window)
        bar.set_postfix_str(f"raw b={batch_size} window {len(windows)}: {windows[-1]:.1f} img/s")
        is_stable = len(windows) >= STABLE_WINDOWS and stable(windows[-STABLE_WINDOWS:], args.stability)
        if is_stable or len(windows) >= args.max_windows:
            break
    used = min(STABLE_WINDOWS, len(windows))
    runs = np.concatenate(durations[-used:]) * 1e3
    bar.update()
    return {
        "batch_size": batch_size,
        "ort_threads": threads,
        "windows": len(windows),
        "stable": is_stable,
        "runs": len(runs),
        "images_per_s": len(runs) * batch_size / (runs.sum() / 1e3),
        "p50_ms": float(np.percentile(runs, 50)),
        "p99_ms": float(np.percentile(runs, 99)),
    }


def served_vs_raw(results: list[dict], raw: list[dict]) -> list[dict]:
    """Per batch size: the best closed-loop served images/s over raw images/s."""
    rows = []
    for raw_row in raw:
        served = [r for r in results if r["batch_size"] == raw_row["batch_size"] and r["mode"] == "concurrency"]
        if not served:
            continue
        best = max(served, key=lambda r: r["images_per_s"])
        rows.append({
            "batch_size": raw_row["batch_size"],
            "served_images_per_s": best["images_per_s"],
            "served_concurrency": best["concurrency"],
            "raw_images_per_s": raw_row["images_per_s"],
            "ratio": best["images_per_s"] / raw_row["images_per_s"],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Reports


CSV_FIELDS = [
    "batch_size", "mode", "concurrency", "rate", "requests_per_s", "images_per_s", "p50_ms", "p90_ms", "p95_ms",
    "p99_ms", "mean_ms", "max_ms", "errors", "requests", "windows", "stable", "client_cpu", "send_lag_p99_ms",
]
SERVER_FIELDS = ["request_us", "queue_us", "compute_input_us", "compute_infer_us", "compute_output_us", "avg_batch_size", "failures"]


def write_csv(path: Path, results: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_FIELDS + [f"server_{name}" for name in SERVER_FIELDS])
        for r in results:
            writer.writerow([r[name] for name in CSV_FIELDS] + [r["server"][name] for name in SERVER_FIELDS])


def plot(path: Path, results: list[dict], raw: list[dict], title: str) -> None:
    """Latency (p50 solid, p99 dashed) against images/s; one colour per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    batch_sizes = sorted({r["batch_size"] for r in results})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, batch_size in enumerate(batch_sizes):
        color = colors[index % len(colors)]
        for mode, marker in (("concurrency", "o"), ("rate", "^")):
            rows = sorted((r for r in results if r["batch_size"] == batch_size and r["mode"] == mode), key=lambda r: r["images_per_s"])
            if not rows:
                continue
            x = [r["images_per_s"] for r in rows]
            suffix = "" if mode == "concurrency" else " (Poisson)"
            axes.plot(x, [r["p50_ms"] for r in rows], "-", marker=marker, color=color, label=f"batch {batch_size} p50{suffix}")
            axes.plot(x, [r["p99_ms"] for r in rows], "--", marker=marker, color=color, alpha=0.6, label=f"batch {batch_size} p99{suffix}")
        for row in raw:
            if row["batch_size"] == batch_size:
                axes.axvline(row["images_per_s"], color=color, linestyle=":", alpha=0.7, label=f"batch {batch_size} raw ORT")
    axes.set_xlabel("throughput (images/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def format_table(results: list[dict]) -> str:
    header = (f"{'batch':>5} {'load':>8} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'err':>4} {'win':>4} {'queue us':>9} {'in us':>7} {'infer us':>9} {'out us':>7} {'avg B':>6} {'cache hit':>9} {'cli CPU':>7}")
    lines = [header, "-" * len(header)]
    for r in results:
        s = r["server"]
        load = f"c={r['concurrency']}" if r["mode"] == "concurrency" else f"r={r['rate']:g}/s"
        lines.append(
            f"{r['batch_size']:>5} {load:>8} {r['requests_per_s']:>8.2f} {r['images_per_s']:>8.1f} {r['p50_ms']:>8.1f} "
            f"{r['p90_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>4} "
            f"{str(r['windows']) + ('' if r['stable'] else '!'):>4} {_fmt(s['queue_us'], '9.0f')} {_fmt(s['compute_input_us'], '7.0f')} "
            f"{_fmt(s['compute_infer_us'], '9.0f')} {_fmt(s['compute_output_us'], '7.0f')} {_fmt(s['avg_batch_size'], '6.2f')} "
            f"{_fmt(cache_hit_ratio(s), '9.0%')} {r['client_cpu']:>6.0%}"
        )
    lines.append("(win: measurement windows; '!' = not stable within --max-windows; server times per request; "
                 "cache hit: share of requests the response cache answered, '-' = cache off; "
                 "cli CPU: the benchmark process's own CPU use, 100% = one core)")
    return "\n".join(lines)


def cache_hit_ratio(server: dict) -> float | None:
    lookups = server.get("cache_hits", 0) + server.get("cache_misses", 0)
    return server["cache_hits"] / lookups if lookups else None


def format_ratio_table(rows: list[dict]) -> str:
    lines = [f"{'batch':>5} {'served img/s':>13} {'(at c)':>6} {'raw img/s':>10} {'served/raw':>10}"]
    for row in rows:
        lines.append(f"{row['batch_size']:>5} {row['served_images_per_s']:>13.1f} {row['served_concurrency']:>6} "
                     f"{row['raw_images_per_s']:>10.1f} {row['ratio']:>10.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(v > 0 and np.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive rates, got {text!r}")
    return values


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m clients.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", type=endpoints_argument, default=DEFAULT_URL,
                        help="Triton gRPC endpoint HOST:PORT, or replicas HOST:PORT,HOST:PORT,... (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.csv, latency_throughput.png")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64, 256], help="seeds per request (default 1,16,64,256)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16], help="closed-loop requests in flight (default 1,4,16)")
    parser.add_argument("--no-concurrency", action="store_true", help="skip the closed-loop sweep (only --rate)")
    parser.add_argument("--rate", type=float_list, default=[], help="open-loop Poisson request rates, requests/s (e.g. 2,8)")
    parser.add_argument("--window", type=float, default=5.0, help="measurement window, s (default %(default)s, like perf_analyzer)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per config, s, not measured (default %(default)s)")
    parser.add_argument("--min-requests", type=int, default=50,
                        help="a window also lasts until this many requests completed in it (default %(default)s)")
    parser.add_argument("--max-windows", type=int, default=10, help="stop after this many windows if not stable (default %(default)s)")
    parser.add_argument("--stability", type=float, default=0.1, help="stable when max/min of the last 3 windows <= 1 + this (default %(default)s)")
    parser.add_argument("--connections", type=int, default=4, help="client objects / gRPC connections per replica (default %(default)s)")
    parser.add_argument("--retries", type=int, default=3,
                        help="re-sends of a request whose replica is down, to another one; a full queue is never retried "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request before it counts as an error")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed; every request then gets new ones")
    parser.add_argument("--seed-pool", type=int, default=None, metavar="N",
                        help="cycle through N seeds instead, so requests repeat (measures the response cache)")
    parser.add_argument("--compare-raw", nargs="?", const="model_repository", type=Path, metavar="REPO_OR_ONNX",
                        help="also measure the served engine in-process (default model_repository) and print served/raw")
    args = parser.parse_args(argv)
    if (args.window <= 0 or args.warmup < 0 or args.min_requests < 1 or args.max_windows < 1 or args.connections < 1
            or not 0 < args.stability < 1 or args.retries < 0):
        parser.error("need --window > 0, --warmup >= 0, --min-requests >= 1, --max-windows >= 1, --connections >= 1, "
                     "0 < --stability < 1, --retries >= 0")
    if args.seed_pool is not None and args.seed_pool < 1:
        parser.error("need --seed-pool >= 1")
    if args.no_concurrency:
        args.concurrency = []
    if not args.concurrency and not args.rate:
        parser.error("nothing to run: give --concurrency and/or --rate")
    return args


async def run_all(args, configs: list[LoadConfig], seeds: SeedCounter, bar, pool: EndpointPool | None = None) -> list[dict]:
    """Run `configs` against the replicas of `pool` (default: a pool of args.url, connected here)."""
    own_pool = pool is None
    if own_pool:
        pool = EndpointPool(args.url, args.model, args.timeout, args.retries, retry_busy=False)
        await asyncio.to_thread(pool.connect)
    clients = {url: make_clients(url, args.connections) for url in pool.urls}
    stats_clients = {url: aioclient.InferenceServerClient(url, channel_args=channel_args()) for url in pool.urls}
    try:
        results = []
        for config in configs:
            results.append(await run_config(config, pool, clients, stats_clients, args.model, seeds, args, bar))
            bar.update()
        return results
    finally:
        for client in [c for replica_clients in clients.values() for c in replica_clients] + list(stats_clients.values()):
            await client.close()
        if own_pool:
            pool.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pool = EndpointPool(args.url, args.model, args.timeout, args.retries, retry_busy=False,
                        log=lambda line: tqdm.write(line, file=sys.stderr))
    try:
        return benchmark(args, pool)
    finally:
        pool.close()


def benchmark(args, pool: EndpointPool) -> int:
    """Check the served model, sweep every configuration, write results.json/.csv and the plot, print the tables."""
    try:
        live_config, limit, engine = check_served_model(args, pool)
    except (TritonClientError, InferenceServerException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    seeds = SeedCounter(args.seed_start, args.seed_pool)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = ort_threads(live_config, engine[1]) if engine else None
    results, raw = run_sweep(args, pool, seeds, engine, threads)
    ratios = served_vs_raw(results, raw)
    # The lone-request stall (see "Lone requests" below) hid behind concurrency >= 16 and the
    # response cache: so a lone client, fresh seeds.
    lone = lone_request_report(pool.live()[0].url, args.model, results, raw, int(seeds.take(LONE_REQUESTS)[0])) \
        if 1 in args.batch_sizes and pool.live() else None

    report = {
        "tool": "clients.benchmark",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": ",".join(args.url),
        "replicas": {endpoint.url: {"answered": endpoint.answered, "up": endpoint.up} for endpoint in pool.endpoints},
        "resent": pool.resent,
        "model": args.model,
        "model_versions": pool.versions,
        "max_batch_size": limit,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "results": results,
        "raw": {"onnx": str(engine[0]), "ort_threads": threads, "results": raw} if engine else None,
        "served_vs_raw": ratios,
        "lone_requests": lone,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    write_csv(args.out / "results.csv", results)
    plot(args.out / "latency_throughput.png", results, raw, f"{args.model} at {','.join(args.url)} ({os.cpu_count()} CPUs)")

    print_summary(results, ratios, lone, engine, threads, pool)
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {args.out / 'latency_throughput.png'}")
    return 0


def check_served_model(args, pool: EndpointPool) -> tuple[dict, int, tuple[Path, Path | None] | None]:
    """Connect to the replicas and check the batch sizes against the served model:
    (its live config, its max_batch_size, the raw engine of --compare-raw or None)."""
    live_config = pool.connect()  # every replica probed; dead ones reported and skipped
    limit = max_batch_size(live_config, args.model)
    too_big = [b for b in args.batch_sizes if b > limit]
    if too_big:
        raise TritonClientError(f"batch sizes {too_big} exceed model '{args.model}' max_batch_size {limit}")
    engine = find_engine(args.compare_raw, args.model, pool.versions) if args.compare_raw else None
    return live_config, limit, engine


def run_sweep(args, pool: EndpointPool, seeds: SeedCounter, engine: tuple[Path, Path | None] | None,
              threads: int | None) -> tuple[list[dict], list[dict]]:
    """Every load configuration, batch size by batch size, each followed by the raw engine at that batch
    size when there is one: (served results, raw results)."""
    configs = [LoadConfig(b, "concurrency", c) for b in args.batch_sizes for c in args.concurrency]
    configs += [LoadConfig(b, "rate", r) for b in args.batch_sizes for r in args.rate]
    total = len(configs) + (len(args.batch_sizes) if engine else 0)
    results, raw = [], []
    with tqdm(total=total, desc="benchmark", unit="config", file=sys.stderr) as bar:
        for batch_size in args.batch_sizes:
            results += asyncio.run(run_all(args, [c for c in configs if c.batch_size == batch_size], seeds, bar, pool))
            if engine:
                # Right after the served runs of this batch size, so that the ratio compares
                # measurements minutes apart at most (a shared machine drifts by 5-10 % over a
                # sweep), and only now: the load has stopped, the server is idle, and on a small
                # machine the two must not share the CPU. The session is closed again before the
                # next served runs (on a GPU host it would hold device memory beside Triton's).
                session = open_raw_session(engine[0], threads, announce=not raw)
                raw.append(measure_raw(session, batch_size, threads, args, seeds, bar))
                del session
    return results, raw


def print_summary(results: list[dict], ratios: list[dict], lone: dict | None, engine: tuple[Path, Path | None] | None,
                  threads: int | None, pool: EndpointPool) -> None:
    """The results table, served vs raw, the lone requests; warnings and notes on stderr."""
    print(format_table(results))
    if ratios:
        print(f"\nserving overhead: served vs in-process ONNX Runtime ({engine[0]}, ort_threads={threads}"
              f"{' = one per core' if threads == 0 else ''}; served = best concurrency)")
        print(format_ratio_table(ratios))
    if lone:
        print("\n" + format_lone(lone))
    busy = [r for r in results if r["client_cpu"] > CLIENT_CPU_WARNING]
    if busy:
        print(f"\nwarning: the benchmark process itself used up to {max(r['client_cpu'] for r in busy):.0%} of a core "
              f"({', '.join(LoadConfig(r['batch_size'], r['mode'], r['concurrency'] or r['rate']).label for r in busy)}): "
              f"the client may limit these figures", file=sys.stderr)
    if pool.resent:
        print(f"\nnote: {pool.resent} requests re-sent after their replica failed ({pool.summary()})", file=sys.stderr)
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"\nwarning: {errors} failed requests ({', '.join(sorted({k for r in results for k in r['error_kinds']}))})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
