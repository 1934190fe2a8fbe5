"""Run Triton's perf_analyzer on the served model and set its figures beside clients.benchmark's.

    python -m clients.perf_analyzer --url localhost:8001 --out out/perf_analyzer \
        --batch-sizes 1,16,64,256 --concurrency 1,4,16 --ours out/bench/results.json
    python -m clients.perf_analyzer --url localhost:8001 --out out/perf_analyzer --pairs 3
    python -m clients.perf_analyzer --locate      # only find/install it and say how

Where perf_analyzer comes from: the tritonclient wheel (requirements.txt pins the server's release;
2.41.0 and 2.51.0 both ship it, and either binary talks to either server) has it in its
`*.data/data/bin/` directory, which pip installs into the environment's bin/. If it is not
there we `pip download` the installed release's wheel (no deps) into .cache/perf_analyzer/ and extract the binary.
It links libb64.so.0d and libcudart.so.12 (even on CPU); the nvidia-pytriton wheel carries both
under hashed names in site-packages/nvidia_pytriton.libs/, so we symlink them under their
sonames into .cache/perf_analyzer/lib/ and put that folder on LD_LIBRARY_PATH.

Same method as clients.benchmark: closed loop at each concurrency, -b seeds per request, distinct
seeds per request (an --input-data JSON of batch-1 SEED entries; perf_analyzer fills a batch of
B from B consecutive entries and gives each request the next B), count windows
(--measurement-mode count_windows --measurement-request-count = --min-requests: perf_analyzer
2.41 checks every second and closes a window once that many requests completed; it ignores
--measurement-interval in this mode), --stability-percentage = 100 * --stability,
--max-trials = --max-windows.

--pairs N runs the two tools alternately, N times per configuration, in alternating order
(ours then perf_analyzer, then perf_analyzer then ours, ...) so that steady drift does not bias
every pair the same way, with our windows on perf_analyzer's rule (1 s, then until
--min-requests completed). It reports the median of each tool and the median and range of the
per-pair ratios. On a small shared machine consecutive runs of one tool differ by 5-10 %, so a
single run of each, minutes apart, cannot tell a real difference from drift; adjacent pairs can.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import statistics
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from clients import benchmark
from clients.benchmark import int_list
from clients.generate import DEFAULT_URL, MODEL, TritonClientError, normalize_url

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache" / "perf_analyzer"
def _installed_tritonclient(default: str = "2.51.0") -> str:
    try:  # the release requirements.txt pinned (one definition), as installed
        return importlib.metadata.version("tritonclient")
    except importlib.metadata.PackageNotFoundError:
        return default


TRITONCLIENT_VERSION = _installed_tritonclient()
# soname perf_analyzer asks for -> file name pattern in nvidia_pytriton.libs
LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
PA_COUNT_WINDOW_S = 1.0  # perf_analyzer 2.41's count windows: checked every second until enough requests
SEED_ELEMENTS_PER_FILE = 2**19  # perf_analyzer keeps (entries x batch) per thread: bound its memory


class PerfAnalyzerNotFound(RuntimeError):
    """perf_analyzer cannot be found or run here; the message says what to do (one line)."""


class PerfAnalyzerFailed(RuntimeError):
    """One perf_analyzer run failed or timed out; the configurations measured before it are kept."""


@dataclass
class PerfAnalyzer:
    binary: Path
    library_dir: Path | None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.library_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.library_dir), env.get("LD_LIBRARY_PATH")]))
        return env

    def version(self) -> str:
        output = subprocess.run([str(self.binary), "--version"], env=self.environment(), capture_output=True, text=True, timeout=30)
        return (output.stdout + output.stderr).strip().splitlines()[0] if output.returncode == 0 else "unknown"


def candidate_binaries() -> list[Path]:
    """Where perf_analyzer may already be: $PERF_ANALYZER, this venv's bin/, the tritonclient wheel, PATH, our cache."""
    candidates = [Path(sys.executable).parent / "perf_analyzer"]
    try:
        files = importlib.metadata.distribution("tritonclient").files or []
        candidates += [Path(f.locate()).resolve() for f in files if f.name == "perf_analyzer"]
    except importlib.metadata.PackageNotFoundError:
        pass
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    return candidates + [CACHE_DIR / "bin" / "perf_analyzer"]


def extract_from_wheel(version: str = TRITONCLIENT_VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """pip download tritonclient==version (no deps) and extract *.data/data/bin/perf_analyzer."""
    wheels = cache_dir / "wheels"
    command = [sys.executable, "-m", "pip", "download", f"tritonclient=={version}", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = sorted(wheels.glob(f"tritonclient-{version}-*.whl"))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PerfAnalyzerNotFound(f"perf_analyzer not installed and `pip download tritonclient=={version}` failed ({last})")
    with zipfile.ZipFile(found[-1]) as wheel:
        members = [name for name in wheel.namelist() if name.endswith(".data/data/bin/perf_analyzer")]
        if not members:
            raise PerfAnalyzerNotFound(f"{found[-1].name} has no perf_analyzer (only the manylinux x86_64/aarch64 wheels ship it)")
        target = cache_dir / "bin" / "perf_analyzer"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(members[0]))
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


def pytriton_library_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(list(spec.submodule_search_locations)[0]).parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def link_libraries(cache_dir: Path = CACHE_DIR) -> Path | None:
    """A folder with libb64.so.0d / libcudart.so.12 symlinked from nvidia_pytriton.libs (None if not installed)."""
    source = pytriton_library_dir()
    if source is None:
        return None
    # One folder per nvidia-pytriton install: environments side by side never re-point each other's links.
    library_dir = cache_dir / "lib" / hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    library_dir.mkdir(parents=True, exist_ok=True)
    for soname, pattern in LIBRARIES.items():
        matches = sorted(source.glob(pattern))
        link = library_dir / soname
        if matches and not (link.is_symlink() and link.resolve() == matches[-1].resolve()):
            partial = library_dir / f".{soname}.{os.getpid()}"
            partial.unlink(missing_ok=True)
            partial.symlink_to(matches[-1])
            os.replace(partial, link)  # atomic: two runs at once never see a half-made link
    return library_dir


def missing_libraries(analyzer: PerfAnalyzer) -> list[str]:
    """Shared libraries the binary cannot resolve (ldd), [] if all resolve or ldd is unavailable."""
    if shutil.which("ldd") is None:
        return []
    result = subprocess.run(["ldd", str(analyzer.binary)], env=analyzer.environment(), capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def locate(candidates: list[Path] | None = None, download: bool = True) -> PerfAnalyzer:
    """A runnable perf_analyzer (binary + library folder); PerfAnalyzerNotFound says why not."""
    explicit = os.environ.get("PERF_ANALYZER")
    if explicit:
        candidates = [Path(explicit)]
        download = False
    elif candidates is None:
        candidates = candidate_binaries()
    binary = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if binary is None and explicit:
        raise PerfAnalyzerNotFound(f"PERF_ANALYZER={explicit} is not an executable file")
    if binary is None and not download:
        raise PerfAnalyzerNotFound(
            f"perf_analyzer not found (looked in {', '.join(map(str, candidates)) or 'nowhere'}); it ships in the "
            f"tritonclient=={TRITONCLIENT_VERSION} wheel: pip install 'tritonclient[grpc]=={TRITONCLIENT_VERSION}' "
            f"or run without --no-download"
        )
    binary = binary or extract_from_wheel()
    analyzer = PerfAnalyzer(binary, link_libraries())
    missing = missing_libraries(analyzer)
    if missing:
        raise PerfAnalyzerNotFound(
            f"{binary} cannot load {', '.join(missing)}: install nvidia-pytriton (requirements.txt), whose "
            f"nvidia_pytriton.libs/ carries them, or put them on LD_LIBRARY_PATH"
        )
    return analyzer


# ---------------------------------------------------------------------------------------------
# Running it


def write_seed_data(path: Path, batch_size: int, first_seed: int = 0) -> int:
    """perf_analyzer --input-data JSON: batch-1 SEED entries; request k gets entries [kB, (k+1)B)."""
    requests = max(4, min(64, SEED_ELEMENTS_PER_FILE // (batch_size * batch_size)))
    entries = [{"SEED": {"content": [first_seed + i], "shape": [1]}} for i in range(requests * batch_size)]
    path.write_text(json.dumps({"data": entries}))
    return requests


def parse_csv(path: Path, batch_size: int) -> dict:
    """perf_analyzer's -f CSV (one row per concurrency; latencies in us) -> our field names."""
    with open(path, newline="") as file:
        row = next(csv.DictReader(file))
    us = lambda name: float(row[name]) if row.get(name) not in (None, "") else None  # noqa: E731
    images_per_s = float(row["Inferences/Second"])
    return {
        "batch_size": batch_size,
        "concurrency": int(row["Concurrency"]),
        "requests_per_s": images_per_s / batch_size,
        "images_per_s": images_per_s,
        **{f"p{p}_ms": us(f"p{p} latency") / 1e3 for p in (50, 90, 95, 99)},
        "client_send_us": us("Client Send"),
        "network_server_us": us("Network+Server Send/Recv"),
        "client_recv_us": us("Client Recv"),
        "server": {
            "queue_us": us("Server Queue"),
            "compute_input_us": us("Server Compute Input"),
            "compute_infer_us": us("Server Compute Infer"),
            "compute_output_us": us("Server Compute Output"),
        },
    }


def run_one(analyzer: PerfAnalyzer, args, batch_size: int, concurrency: int, data_file: Path, tag: str = "") -> dict:
    name = f"pa_b{batch_size}_c{concurrency}{tag}"
    csv_path, log_path = args.out / f"{name}.csv", args.out / f"{name}.log"
    command = [
        str(analyzer.binary), "-m", args.model, "-i", "grpc", "-u", args.url,
        "-b", str(batch_size), "--concurrency-range", str(concurrency), "--max-threads", str(max(16, concurrency)),
        "--measurement-mode", "count_windows", "--measurement-request-count", str(args.min_requests),
        "--stability-percentage", f"{args.stability * 100:g}",
        "--max-trials", str(args.max_windows), "--input-data", str(data_file), "-f", str(csv_path),
        "-v",  # per-window lines: the figures we still report when a config does not stabilise
    ]
    csv_path.unlink(missing_ok=True)
    try:
        result = subprocess.run(command, env=analyzer.environment(), capture_output=True, text=True, timeout=args.pa_timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""  # partial output: bytes or str depending on the platform
        log_path.write_text(" ".join(command) + "\n\n" + (output.decode(errors="replace") if isinstance(output, bytes) else output))
        raise PerfAnalyzerFailed(f"perf_analyzer ran past --pa-timeout {args.pa_timeout:g} s for batch {batch_size}, "
                                 f"concurrency {concurrency} (log {log_path})") from None
    log_path.write_text(" ".join(command) + "\n\n" + result.stdout + result.stderr)
    if csv_path.is_file():
        return {**parse_csv(csv_path, batch_size), "stable": True}
    # Not stable within --max-trials: perf_analyzer writes no CSV, but -v printed every window.
    row = parse_passes(result.stdout, batch_size, concurrency)
    if row is None:
        last = ((result.stdout + result.stderr).strip().splitlines() or ["no output"])[-1]
        raise PerfAnalyzerFailed(f"perf_analyzer failed for batch {batch_size}, concurrency {concurrency} (exit {result.returncode}): {last} (log {log_path})")
    return row


PASS_LINE = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")


def parse_passes(output: str, batch_size: int, concurrency: int) -> dict | None:
    """Figures of an unstable run from -v's per-window lines: mean of the last 3 windows, no percentiles."""
    passes = [(float(a), float(b)) for a, b in PASS_LINE.findall(output)][-3:]
    if not passes:
        return None
    images_per_s = sum(p[0] for p in passes) / len(passes)
    return {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "requests_per_s": images_per_s / batch_size,
        "images_per_s": images_per_s,
        "mean_ms": sum(p[1] for p in passes) / len(passes) / 1e3,
        **{f"p{p}_ms": None for p in (50, 90, 95, 99)},
        "server": None,
        "stable": False,
    }


def load_ours(path: Path) -> dict[tuple[int, int], dict]:
    report = json.loads(path.read_text())
    return {(r["batch_size"], r["concurrency"]): r for r in report["results"] if r["mode"] == "concurrency"}


def _cell(row: dict | None, key: str, width: int) -> str:
    value = None if row is None else row.get(key)
    return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"


def format_comparison(rows: list[dict], ours: dict[tuple[int, int], dict], tolerance: float = 0.10) -> str:
    lines = [f"{'batch':>5} {'conc':>5} {'ours img/s':>11} {'PA img/s':>10} {'ours/PA':>8} {'ours p50':>9} {'PA p50':>8} "
             f"{'ours p99':>9} {'PA p99':>8}  agreement"]
    for row in rows:
        mine = ours.get((row["batch_size"], row["concurrency"]))
        ratio = mine["images_per_s"] / row["images_per_s"] if mine else None
        verdict = "" if ratio is None else "ok" if abs(ratio - 1) <= tolerance else f"off by more than {tolerance:.0%}"
        if not row["stable"] or (mine and not mine["stable"]):
            verdict += " (unstable: " + " and ".join(n for n, r in (("ours", mine), ("PA", row)) if r and not r["stable"]) + ")"
        ratio_cell = f"{ratio:>8.2f}" if ratio is not None else f"{'-':>8}"
        lines.append(f"{row['batch_size']:>5} {row['concurrency']:>5} {_cell(mine, 'images_per_s', 11)} {row['images_per_s']:>10.1f} {ratio_cell} "
                     f"{_cell(mine, 'p50_ms', 9)} {_cell(row, 'p50_ms', 8)} {_cell(mine, 'p99_ms', 9)} {_cell(row, 'p99_ms', 8)}  {verdict}")
    lines.append("(latencies in ms; images/s = perf_analyzer's infer/sec; PA percentiles '-' when it did not stabilise)")
    return "\n".join(lines)


def run_ours(args, batch_size: int, concurrency: int, seeds: "benchmark.SeedCounter", bar) -> dict:
    """One closed-loop configuration measured by clients.benchmark, with the same window settings."""
    bench_args = benchmark.parse_args([
        "--url", args.url, "--out", str(args.out), "--model", args.model, "--window", str(PA_COUNT_WINDOW_S),
        "--warmup", str(args.warmup), "--min-requests", str(args.min_requests), "--max-windows", str(args.max_windows),
        "--stability", str(args.stability),
    ])
    config = benchmark.LoadConfig(batch_size, "concurrency", concurrency)
    [row] = asyncio.run(benchmark.run_all(bench_args, [config], seeds, bar))
    return row


def run_pairs(analyzer: PerfAnalyzer, args, batch_size: int, concurrency: int, data_file: Path, seeds, bar) -> dict:
    """--pairs N: ours and perf_analyzer alternately, N times, the order flipped every pair;
    medians and the per-pair ratios."""
    ours, theirs = [], []

    def run_theirs(index: int) -> None:
        bar.set_postfix_str(f"b={batch_size} c={concurrency}: perf_analyzer")
        theirs.append(run_one(analyzer, args, batch_size, concurrency, data_file, tag=f"_pair{index + 1}"))
        bar.update()

    for index in range(args.pairs):
        if index % 2:
            run_theirs(index)
        ours.append(run_ours(args, batch_size, concurrency, seeds, bar))
        if not index % 2:
            run_theirs(index)
    ratios = [a["images_per_s"] / b["images_per_s"] for a, b in zip(ours, theirs)]
    return {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "ours_images_per_s": [r["images_per_s"] for r in ours],
        "pa_images_per_s": [r["images_per_s"] for r in theirs],
        "ours_p50_ms": [r["p50_ms"] for r in ours],
        "pa_p50_ms": [r["p50_ms"] for r in theirs],
        "ratios": ratios,
        "ours_median": statistics.median(r["images_per_s"] for r in ours),
        "pa_median": statistics.median(r["images_per_s"] for r in theirs),
        "ratio_median": statistics.median(ratios),
        "stable": all(r["stable"] for r in ours + theirs),
        "ours_errors": sum(r["errors"] for r in ours),
    }


def format_pairs(rows: list[dict], tolerance: float = 0.10) -> str:
    lines = [f"{'batch':>5} {'conc':>5} {'ours img/s':>11} {'PA img/s':>10} {'ours/PA':>8} {'pair ratios':>20}  agreement"]
    for row in rows:
        ratio = row["ratio_median"]
        verdict = "ok" if abs(ratio - 1) <= tolerance else f"off by more than {tolerance:.0%}"
        if row["ours_errors"]:
            verdict += f" ({row['ours_errors']} of our requests failed)"
        if not row["stable"]:
            verdict += " (some runs unstable)"
        spread = f"{min(row['ratios']):.2f}-{max(row['ratios']):.2f}"
        lines.append(f"{row['batch_size']:>5} {row['concurrency']:>5} {row['ours_median']:>11.1f} {row['pa_median']:>10.1f} "
                     f"{ratio:>8.2f} {spread:>20}  {verdict}")
    lines.append(f"(medians of {len(rows[0]['ratios']) if rows else 0} alternating runs per configuration; "
                 "ours/PA = median of the per-pair ratios; images/s = perf_analyzer's infer/sec)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.perf_analyzer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="Triton gRPC endpoint HOST:PORT (default %(default)s)")
    parser.add_argument("--out", type=Path, help="directory for perf_analyzer's CSVs/logs and pa_results.json")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64, 256])
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16])
    parser.add_argument("--stability", type=float, default=0.1, help="--stability-percentage / 100 (default %(default)s)")
    parser.add_argument("--min-requests", type=int, default=50, help="--measurement-request-count (default %(default)s)")
    parser.add_argument("--max-windows", type=int, default=10, help="--max-trials (default %(default)s)")
    parser.add_argument("--ours", type=Path, help="clients.benchmark results.json to compare with")
    parser.add_argument("--pairs", type=int, default=0,
                        help="run clients.benchmark and perf_analyzer alternately this many times per configuration "
                             "and compare medians (instead of --ours)")
    parser.add_argument("--warmup", type=float, default=2.0, help="with --pairs: our warm-up per run, s (default %(default)s)")
    parser.add_argument("--pa-timeout", type=float, default=900.0,
                        help="seconds one perf_analyzer run may take (default %(default)s)")
    parser.add_argument("--locate", action="store_true", help="only find (or install) perf_analyzer and print how to run it")
    parser.add_argument("--no-download", action="store_true", help="do not pip download the wheel when perf_analyzer is missing")
    args = parser.parse_args(argv)
    args.url = normalize_url(args.url)
    if not args.locate and args.out is None:
        parser.error("--out DIR is required (or use --locate)")
    if args.ours is not None and not args.ours.is_file():
        parser.error(f"--ours {args.ours}: no such file (run `make bench` first)")
    if args.pairs < 0 or (args.pairs and args.ours is not None):
        parser.error("--pairs N (N >= 1) measures ours itself: do not combine it with --ours")
    if args.min_requests < 1 or args.max_windows < 1 or args.warmup < 0 or args.pa_timeout <= 0 or not 0 < args.stability < 1:
        parser.error("need --min-requests >= 1, --max-windows >= 1, --warmup >= 0, --pa-timeout > 0, 0 < --stability < 1")
    return args


def run_sweep(analyzer: PerfAnalyzer, args) -> tuple[list[dict], list[dict], Exception | None]:
    """Every configuration, by perf_analyzer alone or (--pairs) alternately with ours: (rows, pairs, the
    error that stopped the sweep or None; what was measured before it is kept)."""
    rows, pairs = [], []
    seeds = benchmark.SeedCounter()
    try:
        runs = len(args.batch_sizes) * len(args.concurrency) * (2 * args.pairs if args.pairs else 1)  # --pairs: ours + PA
        with tqdm(total=runs, desc="perf_analyzer", unit="run", file=sys.stderr) as bar:
            for batch_size in args.batch_sizes:
                data_file = args.out / f"seeds_b{batch_size}.json"
                write_seed_data(data_file, batch_size)
                for concurrency in args.concurrency:
                    if args.pairs:
                        pairs.append(run_pairs(analyzer, args, batch_size, concurrency, data_file, seeds, bar))
                    else:
                        bar.set_postfix_str(f"b={batch_size} c={concurrency}")
                        rows.append(run_one(analyzer, args, batch_size, concurrency, data_file))
                        bar.update()
    except (PerfAnalyzerFailed, TritonClientError, InferenceServerException) as error:
        return rows, pairs, error  # what was measured before it is still written
    return rows, pairs, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        analyzer = locate(download=not args.no_download)
    except PerfAnalyzerNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.locate:
        prefix = f"LD_LIBRARY_PATH={analyzer.library_dir} " if analyzer.library_dir else ""
        print(f"{analyzer.version()}: {analyzer.binary}")
        print(f"run it as: {prefix}{analyzer.binary} -m {args.model} -i grpc -u {args.url} ...")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    rows, pairs, failure = run_sweep(analyzer, args)
    report = {"tool": "perf_analyzer", "version": analyzer.version(), "binary": str(analyzer.binary), "url": args.url,
              "model": args.model, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": rows, "pairs": pairs, "error": None if failure is None else str(failure)}
    (args.out / "pa_results.json").write_text(json.dumps(report, indent=2))
    if rows or pairs:
        print(format_pairs(pairs) if args.pairs else format_comparison(rows, load_ours(args.ours) if args.ours else {}))
    logs = "per pair and config" if args.pairs else "per config"
    print(f"\nwrote {args.out / 'pa_results.json'} (+ perf_analyzer's CSV and log {logs})")
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
