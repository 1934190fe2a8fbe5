"""Serving configuration sweep (`make tune-serving`): latency against throughput per config.pbtxt variant.

    python -m clients.tune_serving --model-repository model_repository --out out/tune [--repeats 2]

Each variant is the repository's config.pbtxt with a few settings changed (dynamic batching delay,
instance count, ONNX Runtime threads, preferred batch sizes). For each, a server of its own (response
cache off, nothing else running) is measured by clients.benchmark at the loads that exposed the
lone-request stall (with a queue policy in config.pbtxt, Triton's dynamic batcher let a lone client's
requests wait ~500 ms; see model_repository/bamsgan/config.pbtxt): one seed per request from 1 and
from 16 clients, batches of 16 and 64 from one client. Raw in-process ONNX Runtime is measured beside
it, and the variants take turns (A B C, then C B A, ...) so that a shared machine's drift does not
favour one. Prints one row per variant: median images/s and p99 of its runs, the
spread (min-max) and served/raw, and writes sweep.json.

--model-analyzer PATH runs NVIDIA's triton-model-analyzer (its `model-analyzer` executable) on the
same variants instead, in its local launch mode against this project's tritonserver. It cannot share
the project's environment (it needs tritonclient[all], cuda-python and a newer protobuf): install
it in a venv of its own (`python3 -m venv /opt/ma && /opt/ma/bin/pip install triton-model-analyzer`).
What it needs from us, written into its config here: the launcher's backend directory and
environment (the Python-backend stub for this interpreter, nvidia_pytriton.libs), ports of its own,
perf_analyzer behind a wrapper that sets its library path (model-analyzer does not pass
LD_LIBRARY_PATH on), the seed data file, and `cpu_only` without a GPU. PyPI's `perf-analyzer`
package is a placeholder with no binary; the one in the tritonclient wheel is used.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from serving.launcher import (LaunchError, TritonServer, find_tritonserver, free_ports, repository_models,
                              server_environment)

MODEL = "bamsgan"
LOADS = (("1", "1,16"), ("16", "1"), ("64", "1"))  # (batch size, concurrencies): the loads that exposed the lone-request stall
# name -> settings; absent = the repository's own value.
VARIANTS = {
    "repository": {},
    "delay 200us": {"max_queue_delay_microseconds": 200},
    "delay 1000us": {"max_queue_delay_microseconds": 1000},
    "2 instances x 1 thread": {"count": 2, "ort_threads": 1},
    "preferred 16+64": {"preferred_batch_size": [16, 64], "max_queue_delay_microseconds": 1000},
}


def variant_config(text: str, settings: dict) -> str:
    """config.pbtxt text with `settings` applied (only the keys this sweep varies)."""
    if "max_queue_delay_microseconds" in settings:
        text = re.sub(r"max_queue_delay_microseconds:\s*\d+", f"max_queue_delay_microseconds: {settings['max_queue_delay_microseconds']}", text)
    if "preferred_batch_size" in settings:
        sizes = ", ".join(str(size) for size in settings["preferred_batch_size"])
        text = re.sub(r"(dynamic_batching\s*\{)", rf"\1\n  preferred_batch_size: [ {sizes} ]", text, count=1)
    if "count" in settings:
        text = re.sub(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+", rf"\g<1>{settings['count']}", text)
    if "ort_threads" in settings:
        text = re.sub(r'(key:\s*"ort_threads".*?string_value:\s*")\d+', rf"\g<1>{settings['ort_threads']}", text, flags=re.S)
    return text


def variant_repository(source: Path, settings: dict, into: Path) -> Path:
    """A model repository holding the newest version of `source` and the variant's config.pbtxt."""
    version = max(repository_models(source)[MODEL])
    model_dir = into / MODEL
    shutil.copytree(source / MODEL / str(version), model_dir / str(version))
    config = variant_config((source / MODEL / "config.pbtxt").read_text(), settings)
    (model_dir / "config.pbtxt").write_text(config)
    return into


def measure(repository: Path, out: Path, args) -> dict:
    """clients.benchmark at every load against a fresh server on `repository`: {load: row}, {batch: raw}."""
    rows, raw = {}, {}
    with TritonServer(repository, *free_ports(3), log_path=out / "tritonserver.log", cache_mib=0, poll_seconds=0) as server:
        for batch_size, concurrency in LOADS:
            result_dir = out / f"b{batch_size}"
            command = [sys.executable, "-m", "clients.benchmark", "--url", server.grpc_url, "--out", str(result_dir),
                       "--batch-sizes", batch_size, "--concurrency", concurrency, "--window", str(args.window),
                       "--warmup", "1", "--max-windows", str(args.max_windows), "--compare-raw", str(repository)]
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise LaunchError(f"clients.benchmark at b{batch_size} c{concurrency} failed (exit {done.returncode}): {last}")
            report = json.loads((result_dir / "results.json").read_text())
            for row in report["results"]:
                rows[f"b{row['batch_size']} c{row['concurrency']}"] = row
            for row in report["raw"]["results"]:
                raw[row["batch_size"]] = row["images_per_s"]
    return {"rows": rows, "raw": raw}


def summarize(runs: list[dict]) -> dict:
    """Per load: median images/s and p99 over the runs, and served/raw per run against raw ONNX Runtime
    at batch B x C (16 clients of one seed are held against one batch of 16: what the dynamic batcher
    can make of them)."""
    summary = {}
    for load in runs[0]["rows"]:
        batch_size, concurrency = (int(part[1:]) for part in load.split())
        served = [run["rows"][load]["images_per_s"] for run in runs]
        raws = [{int(batch): value for batch, value in run["raw"].items()} for run in runs]  # JSON keys are strings
        ratios = [run["rows"][load]["images_per_s"] / raw[batch_size * concurrency]
                  for run, raw in zip(runs, raws) if batch_size * concurrency in raw]
        summary[load] = {
            "images_per_s": statistics.median(served), "images_per_s_range": [min(served), max(served)],
            "p99_ms": statistics.median(run["rows"][load]["p99_ms"] for run in runs),
            "raw_batch": batch_size * concurrency,
            "served_vs_raw": statistics.median(ratios) if ratios else None,
            "served_vs_raw_range": [min(ratios), max(ratios)] if ratios else None,
            "avg_batch": statistics.median(run["rows"][load]["server"]["avg_batch_size"] or 0 for run in runs),
        }
    return summary


def format_sweep(summaries: dict[str, dict], repeats: int) -> str:
    lines = [f"{'variant':<24} {'load':<7} {'img/s':>7} {'(range)':>13} {'p99 ms':>8} {'avg B':>6} {'raw B':>5} {'served/raw':>10} {'(range)':>11}"]
    for name, summary in summaries.items():
        for load, s in summary.items():
            low, high = s["images_per_s_range"]
            ratio = "-" if s["served_vs_raw"] is None else f"{s['served_vs_raw']:.2f}"
            spread = "" if s["served_vs_raw_range"] is None else "{:.2f}-{:.2f}".format(*s["served_vs_raw_range"])
            lines.append(f"{name:<24} {load:<7} {s['images_per_s']:>7.0f} {f'{low:.0f}-{high:.0f}':>13} {s['p99_ms']:>8.1f} "
                         f"{s['avg_batch']:>6.1f} {s['raw_batch']:>5} {ratio:>10} {spread:>11}")
    lines.append(f"(median of {repeats} runs per variant, variants alternating; served/raw: served images/s over in-process "
                 f"ONNX Runtime at batch B x C with the variant's threads, measured right after; cache off)")
    return "\n".join(lines)


def model_analyzer_config(args, names: list[str], work: Path) -> Path:
    """A triton-model-analyzer config (JSON is YAML) for a manual search over `names`' settings."""
    from clients import perf_analyzer
    from serving.launcher import prepare_python_backend

    binary = find_tritonserver()
    environment = server_environment(binary, own_stub=True)
    analyzer = perf_analyzer.locate()
    wrapper = work / "perf_analyzer.sh"
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={analyzer.library_dir} exec {analyzer.binary} \"$@\"\n")
    wrapper.chmod(0o755)
    seeds = work / "seeds.json"
    perf_analyzer.write_seed_data(seeds, batch_size=1)
    repository = variant_repository(args.model_repository, {}, work / "model_repository")
    config = (repository / MODEL / "config.pbtxt").read_text().replace("response_cache {\n  enable: true\n}", "")
    (repository / MODEL / "config.pbtxt").write_text(config)  # cache off, as in our sweep
    grpc, http, metrics = free_ports(3)
    settings = [VARIANTS[name] for name in names]
    search = {
        "dynamic_batching": {"max_queue_delay_microseconds": sorted({s.get("max_queue_delay_microseconds", 0) for s in settings})},
        "instance_group": [[{"kind": "KIND_CPU", "count": count}] for count in sorted({s.get("count", 1) for s in settings})],
    }
    analyzer_config = {
        "model_repository": str(repository), "output_model_repository_path": str(work / "output_repository"),
        "override_output_model_repository": True, "export_path": str(args.out / "model_analyzer"),
        "checkpoint_directory": str(args.out / "model_analyzer" / "checkpoints"),  # default: the working directory
        "triton_launch_mode": "local", "triton_server_path": str(binary),
        # --disable-auto-complete-config is left out: model-analyzer writes flags as --flag=True.
        "triton_server_flags": {"backend-directory": str(prepare_python_backend(binary)), "grpc-port": grpc,
                                "http-port": http, "metrics-port": metrics},
        "triton_grpc_endpoint": f"localhost:{grpc}", "triton_http_endpoint": f"localhost:{http}",
        "triton_metrics_url": f"http://localhost:{metrics}/metrics",
        "triton_server_environment": {"PATH": environment["PATH"], "LD_LIBRARY_PATH": environment["LD_LIBRARY_PATH"]},
        "perf_analyzer_path": str(wrapper), "perf_analyzer_flags": {"input-data": str(seeds)},
        "run_config_search_disable": True,
        "profile_models": {MODEL: {"cpu_only": True, "parameters": {"concurrency": [1, 16]}, "model_config_parameters": search}},
    }
    path = work / "model_analyzer.yaml"
    path.write_text(json.dumps(analyzer_config, indent=1))
    return path


def run_model_analyzer(executable: str, args, names: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="bamsgan-model-analyzer-") as scratch:
        config = model_analyzer_config(args, names, Path(scratch))
        environment = server_environment(find_tritonserver(), own_stub=True)  # its tritonserver's libraries
        return subprocess.run([executable, "profile", "-f", str(config)], env=environment).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.tune_serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("out/tune"))
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating (default %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (default: all)")
    parser.add_argument("--window", type=float, default=3.0, help="benchmark window, s (default %(default)s)")
    parser.add_argument("--max-windows", type=int, default=4, help="benchmark windows at most (default %(default)s)")
    parser.add_argument("--model-analyzer", metavar="PATH",
                        help="run NVIDIA's model-analyzer executable (a venv of its own) on the variants instead")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or args.repeats < 1:
        parser.error(f"unknown variants {unknown} (choose from {', '.join(VARIANTS)})" if unknown else "need --repeats >= 1")
    try:
        if MODEL not in repository_models(args.model_repository):
            raise LaunchError(f"{args.model_repository} has no published {MODEL} version: run make export (or make serve once)")
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model_analyzer:
        return run_model_analyzer(args.model_analyzer, args, names)
    try:
        runs = sweep(args, names)
    except LaunchError as error:  # a server that did not start, a benchmark that failed: one line
        print(f"error: {error}", file=sys.stderr)
        return 1
    summaries = {name: summarize(name_runs) for name, name_runs in runs.items()}
    (args.out / "sweep.json").write_text(json.dumps({"variants": {n: VARIANTS[n] for n in names}, "runs": runs,
                                                     "summary": summaries}, indent=2))
    print(format_sweep(summaries, args.repeats))
    print(f"\nwrote {args.out / 'sweep.json'}")
    return 0


def sweep(args, names: list[str]) -> dict[str, list[dict]]:
    """Every variant `args.repeats` times, alternating order, each on its own server: {variant: [runs]}."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    order = [name for repeat in range(args.repeats) for name in (names if repeat % 2 == 0 else names[::-1])]
    with tempfile.TemporaryDirectory(prefix="bamsgan-tune-") as scratch, tqdm(order, desc="sweep", unit="server") as bar:
        for index, name in enumerate(bar):
            bar.set_postfix_str(name)
            repository = variant_repository(args.model_repository, VARIANTS[name], Path(scratch) / f"{index}" / "model_repository")
            runs[name].append(measure(repository, args.out / f"{index}-{re.sub(r'[^a-z0-9]+', '-', name)}", args))
    return runs


if __name__ == "__main__":
    sys.exit(main())
