"""GPU readiness in one command (make gpu-check): every GPU path of train -> export -> serve, checked
and timed within minutes, in one JSON report and one table.

    python -m clients.gpu_check [--parts kernel,attention,training,generator,serving[,peers]] [--budget 480]
                                [--out out/gpu-check-<time>] [--repository model_repository] [--ckpt FILE]

Parts, in this order; each is a function that returns a record with "status" ok | failed | skipped
(a skipped part names the piece that is missing; a failed one the error), its seconds and figures:

1. kernel     tests/test_attention_kernel.py on CUDA (a pytest subprocess): the OpenAI Triton kernel's
              forward and backward against the fp32 reference in fp32, bf16 and fp16, including
              every attention shape of the paper's model.
2. attention  kernel vs SDPA vs the bmm+softmax reference at every attention shape of G and D
              (c = 64), bf16, B = 256, forward and forward+backward: median ms (min-max) over CUDA
              events, extra peak memory (training.studies.bench_attention.measure_shapes).
3. training   the paper-preset training step (bf16 autocast, channels-last), eager and
              torch.compile, kernel and SDPA: images/s and peak CUDA memory, one
              `python -m training.studies.bench_training` subprocess per configuration.
4. generator  raw faces/s of the served function (latents in, uint8 faces out, host to host) at
              batch 1, 64, 256, 1024: PyTorch eager fp32 and bf16, compiled bf16, compiled bf16 with
              CUDA graphs; ONNX Runtime CUDA (FP32, FP16) and TensorRT FP16 where installed; each
              engine's parity against fp32 PyTorch (export.benchmark.measure_engines).
5. serving    Triton (the nvidia-pytriton wheel's tritonserver, or one on PATH) serving the newest
              version in --repository (else a fresh random-weights export, with TensorRT when it is
              installed) on its GPU instance: served faces/s and served/raw from
              `python -m clients.benchmark --compare-raw`, and the engine the Python backend chose.

6. peers      only when named in --parts (it trains for minutes: give it --budget 1200 or more):
              this trainer, lightweight-gan and stylegan2-pytorch on the same faces for a third
              each of the part's share, then FID/KID/precision/recall of each (clients/gpu_peers.py;
              the peers come from requirements-peers.txt, installed on the GPU box only).

Budget: --budget seconds for the whole run (default 480: 8 minutes; --quick: 240 s and fewer
timed runs). Each part gets the time left in proportion to its cap (PART_CAPS) among the parts
still to run; subprocesses are stopped at their deadline, in-process parts stop between
measurements, and a part whose share is below its minimum is skipped as "budget spent". Figures
come from short runs (warm-up first, then several timed windows or repeats with their spread): they
say what works and roughly how fast, not a final benchmark.

Writes --out/report.json (atomically) and --out/report.txt (the table that is also printed).
Exit status 0 when no part failed, 1 when one failed. Without a CUDA GPU: one line, exit 2.
`--device cpu` runs the same code on CPU with whatever the flags say (the tool's own tests use
it with tiny sizes); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTS = ("kernel", "attention", "training", "generator", "serving")  # the default run
OPTIONAL_PARTS = ("peers",)  # only when named in --parts: minutes of GPU training (clients/gpu_peers.py)
ALL_PARTS = PARTS + OPTIONAL_PARTS
# Seconds each part may take within the default 480 s budget (scaled with --budget), and the least
# it needs to start at all.
PART_CAPS = {"kernel": 110, "attention": 50, "training": 150, "generator": 110, "serving": 60, "peers": 1800}
PART_MINIMUM = {"kernel": 20, "attention": 10, "training": 40, "generator": 20, "serving": 30, "peers": 420}
PEERS_SCORING_SECONDS = 240  # of the peers part's share, kept for generating and scoring after the three trainings
# Defaults of the flags that --quick lowers (an explicit flag wins over both).
DEFAULTS = {"budget": 480, "repeats": 10, "train_steps": 20, "seconds": 0.5, "windows": 5, "serve_window": 1.5}
QUICK = {"budget": 240, "repeats": 5, "train_steps": 10, "seconds": 0.3, "windows": 3, "serve_window": 1.0}
NO_GPU = ("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU box "
          "(docs/gpu-check.md), or pass --device cpu for a dry run of the tool")
GENERATOR_ENGINES_CUDA = ["pytorch", "pytorch-bf16", "ort-fp32", "ort-fp16", "tensorrt-fp16", "pytorch-bf16-compiled",
                          "pytorch-bf16-cudagraphs"]
GENERATOR_ENGINES_CPU = ["pytorch", "pytorch-bf16", "ort-fp32"]
TRAINING_CONFIGS = [("sdpa", False), ("kernel", False), ("sdpa", True), ("kernel", True)]  # (attention, compiled)


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def failed(reason: str, **extra) -> dict:
    return {"status": "failed", "reason": reason, **extra}


def module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


class Clock:
    """The run's deadline and each part's share of it.

    A part may use the time left times its cap's share of the caps of the parts still to run, so
    time a fast part leaves over goes to the later ones, and --parts subsets share the whole budget.
    """

    def __init__(self, budget: float, parts: list[str]):
        self.budget, self.started, self.pending = budget, time.monotonic(), list(parts)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def part_deadline(self, part: str) -> float:
        """Monotonic time by which `part` must finish; marks it as started."""
        share = PART_CAPS[part] / sum(PART_CAPS[p] for p in self.pending)
        self.pending.remove(part)
        return time.monotonic() + max(0.0, self.left()) * share

    def too_little_for(self, part: str) -> bool:
        if self.left() * PART_CAPS[part] / sum(PART_CAPS[p] for p in self.pending) >= PART_MINIMUM[part]:
            return False
        self.pending.remove(part)
        return True


def run_command(command: list[str], deadline: float, log_path: Path | None = None, env: dict | None = None) -> dict:
    """Run a subprocess until it ends or `deadline`; {"returncode", "seconds", "output", "timed_out"}."""
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                                timeout=max(1.0, deadline - time.monotonic()))
        output, code, timed_out = result.stdout + result.stderr, result.returncode, False
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
        output += (error.stderr or b"").decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        code, timed_out = None, True
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {' '.join(command)}\n{output}")
    return {"returncode": code, "seconds": round(time.monotonic() - started, 1), "output": output, "timed_out": timed_out}


def last_json_line(text: str) -> dict | None:
    """The last line of `text` that is a JSON object (the CLIs' machine-readable summary)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


# ---------------------------------------------------------------------------------------------
# Host


def host_info() -> dict:
    """What the parts depend on: GPU, torch, Triton, ONNX Runtime providers, TensorRT, tritonserver."""
    import numpy
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": numpy.__version__, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        info["nvidia_driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else None
    try:
        import triton

        info["openai_triton"] = triton.__version__
    except ImportError:
        info["openai_triton"] = None
    try:
        import onnxruntime

        info["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except (ImportError, OSError):
        info["tensorrt"] = None
    try:
        from serving.launcher import LaunchError, find_tritonserver

        info["tritonserver"] = str(find_tritonserver())
    except (ImportError, LaunchError) as error:
        info["tritonserver"] = None
        info["tritonserver_missing"] = str(error)
    return info


# ---------------------------------------------------------------------------------------------
# 1. kernel tests


def part_kernel(args, deadline: float) -> dict:
    """tests/test_attention_kernel.py on the GPU: counts of passed/failed/skipped tests."""
    if args.device != "cuda":
        return skipped("the kernel's CUDA tests need a CUDA device (on CPU, make test runs them in the Triton interpreter)")
    if module_missing("triton"):
        return skipped("OpenAI Triton is not installed (pip install triton)")
    if module_missing("pytest"):
        return skipped("pytest is not installed")
    test_file = REPO_ROOT / "tests" / "test_attention_kernel.py"
    if not test_file.is_file():
        return skipped(f"{test_file.relative_to(REPO_ROOT)} is not in this copy of the tree")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(test_file)]
    if not module_missing("xdist"):  # cold Triton compiles and autotuning run in parallel processes
        command += ["-n", str(min(8, os.cpu_count() or 1))]
    run = run_command(command, deadline, args.out / "logs" / "kernel-tests.log")
    counts = pytest_counts(run["output"])
    record = {"status": "ok" if run["returncode"] == 0 else "failed", "tests": counts, "seconds": run["seconds"],
              "log": "logs/kernel-tests.log"}
    if run["timed_out"]:
        record["reason"] = f"stopped at the part's cap after {run['seconds']} s"
    elif run["returncode"] != 0:
        record["reason"] = f"pytest exit {run['returncode']}: {counts}"
    return record


def pytest_counts(output: str) -> dict:
    """{"passed": n, "failed": n, "skipped": n, "error": n} from pytest's summary line."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?)", line)
        if found and (" in " in line or line.startswith("=")):
            for number, what in found:
                counts["error" if what.startswith("error") else what] += int(number)
            break
    return counts


# ---------------------------------------------------------------------------------------------
# 2. attention shapes


def part_attention(args, deadline: float) -> dict:
    import torch

    from training.studies.bench_attention import DTYPES, PASSES, available_impls, format_records, measure_shapes

    device = torch.device(args.device)
    impls, note = available_impls(device)
    dtype = DTYPES["bfloat16"]
    records = []
    for pass_name in PASSES:  # forward first: the cheaper half survives a tight budget
        if time.monotonic() > deadline:
            note = (note + "; " if note else "") + f"stopped at the part's deadline before {pass_name}"
            break
        records += measure_shapes(args.channels, [args.attention_batch], impls, device, dtype, (pass_name,),
                                  args.repeats, args.warmup)
    return {"status": "ok", "impls": impls, "note": note, "dtype": "bfloat16", "records": records,
            "table": format_records(records) if records else ""}


# ---------------------------------------------------------------------------------------------
# 3. training step


def part_training(args, deadline: float) -> dict:
    """One training.studies.bench_training subprocess per (attention, compiled) configuration."""
    configs = TRAINING_CONFIGS if args.device == "cuda" else [("sdpa", False)]
    note = None if args.device == "cuda" else "CPU dry run: SDPA eager only (the kernel needs CUDA; compiling takes minutes on CPU)"
    if args.device == "cuda" and module_missing("triton"):
        configs = [c for c in configs if c[0] != "kernel"]
        note = "kernel configurations skipped: OpenAI Triton is not installed"
    preset, batch = ("paper", 64) if args.device == "cuda" else ("cpu", 8)
    results = []
    for index, (impl, compiled) in enumerate(configs):
        name = f"{impl}{' compiled' if compiled else ''}"
        left = deadline - time.monotonic()
        if left < 10:
            results.append({"config": name, "attention": impl, "compiled": compiled, "status": "skipped",
                            "reason": "budget spent (the part's cap)"})
            continue
        # Compiled runs need longer (torch.compile of G and D): give each its share of what is left.
        share = left / (len(configs) - index) * (1.2 if compiled else 0.8)
        command = [sys.executable, "-m", "training.studies.bench_training", "--preset", preset, "--batch-size", str(batch),
                   "--steps", str(args.train_steps), "--impls", impl, "--device", args.device]
        if args.device == "cpu":
            command += ["--threads", "1"]
        if compiled:
            command.append("--compile")
        run = run_command(command, min(deadline, time.monotonic() + share),
                          args.out / "logs" / f"training-{impl}{'-compiled' if compiled else ''}.log")
        summary = last_json_line(run["output"]) or {}
        record = {"config": name, "attention": impl, "compiled": compiled, "seconds": run["seconds"]}
        if impl in summary:
            record.update(status="ok", **summary[impl])
        elif run["timed_out"]:
            record.update(status="failed", reason=f"stopped after {run['seconds']} s (its share of the part's cap)")
        else:
            tail = [line for line in run["output"].splitlines() if line.strip()][-1:] or ["no output"]
            record.update(status="failed", reason=f"exit {run['returncode']}: {tail[0][:300]}")
        results.append(record)
    statuses = {r["status"] for r in results}
    status = "failed" if "failed" in statuses else "ok" if "ok" in statuses else "skipped"
    record = {"status": status, "preset": preset, "batch_size": batch, "steps": args.train_steps, "note": note,
              "configs": results}
    if statuses != {"ok"}:
        record["reason"] = "; ".join(f"{r['config']}: {r['reason']}" for r in results if r["status"] != "ok")
    return record


# ---------------------------------------------------------------------------------------------
# 4. generator engines


def generator_state(args) -> tuple[dict, str]:
    """The generator to time: --ckpt's EMA weights, else fresh weights of --channels."""
    from export.benchmark import fresh_state

    if args.ckpt:
        from export.pipeline import read_checkpoint

        state, _ = read_checkpoint(Path(args.ckpt))
        return state, f"checkpoint {args.ckpt}"
    return fresh_state(args.channels), f"fresh weights, channels={args.channels}"


def part_generator(args, deadline: float) -> dict:
    import torch

    from export.benchmark import format_table, measure_engines
    from training.checkpoint import generator_from_checkpoint

    state, source = generator_state(args)
    engines = args.engines or (GENERATOR_ENGINES_CUDA if args.device == "cuda" else GENERATOR_ENGINES_CPU)
    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    results = measure_engines(lambda: generator_from_checkpoint(state), engines, args.batch_sizes, args.device,
                              seconds=args.seconds, windows=args.windows, threads=args.threads, check_parity=True,
                              deadline=deadline, log=lambda line: print(line, flush=True))
    failures = [f"{name}: {r['reason']}" for name, r in results.items() if r["status"] == "failed"]
    parity_failures = [name for name, r in results.items() if r["status"] == "ok" and not r["parity"]["passed"]]
    record = {"status": "failed" if failures or parity_failures else "ok", "source": source,
              "batch_sizes": args.batch_sizes, "engines": results, "table": format_table(results, args.batch_sizes)}
    if failures or parity_failures:
        record["reason"] = "; ".join(failures + [f"{name}: parity failed" for name in parity_failures])
    return record


# ---------------------------------------------------------------------------------------------
# 5. serving


def serving_missing() -> str | None:
    """The piece the serving part lacks here (one line), or None when it can run."""
    import numpy

    from serving.launcher import LaunchError, find_tritonserver, prepare_python_backend

    if module_missing("tritonclient"):
        return "tritonclient is not installed (pip install -r requirements.txt)"
    try:
        prepare_python_backend(find_tritonserver())
    except LaunchError as error:
        return str(error)
    if int(numpy.__version__.split(".")[0]) >= 2:
        return f"numpy {numpy.__version__}: Triton's Python backend (2.41-2.51) needs numpy < 2 (requirements.txt)"
    return None


def serving_engine_missing(device: str) -> str | None:
    """Why the Python backend on a GPU instance would run ONNX Runtime on the CPU (None if it need not)."""
    if device != "cuda":
        return None
    import onnxruntime as ort

    from export.tensorrt_build import missing_requirements

    trt_problem = missing_requirements()
    if trt_problem is None or "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return (f"no GPU serving engine: {trt_problem}; and ONNX Runtime {ort.__version__} has no CUDAExecutionProvider "
            f"(install onnxruntime-gpu). The GPU instance runs ONNX Runtime on the CPU")


def newest_version(repository: Path) -> Path | None:
    model_dir = repository / "bamsgan"
    versions = sorted((int(d.name), d) for d in model_dir.glob("[0-9]*") if d.name.isdigit() and (d / "generator.onnx").is_file())
    return versions[-1][1] if versions else None


def prepare_repository(args, scratch: Path) -> tuple[Path, str]:
    """A private model repository: a copy of the newest exported version, else a fresh export."""
    repository = scratch / "model_repository"
    model_dir = repository / "bamsgan"
    model_dir.mkdir(parents=True)
    version = newest_version(args.repository)
    if version is not None:  # the version's own config (export may have capped max_batch_size)
        shutil.copy(version.parent / "config.pbtxt", model_dir / "config.pbtxt")
        shutil.copytree(version, model_dir / version.name)
        return repository, f"version {version.name} of {args.repository}"
    shutil.copy(REPO_ROOT / "model_repository" / "bamsgan" / "config.pbtxt", model_dir / "config.pbtxt")
    from export.pipeline import export_checkpoint
    from export.tensorrt_build import missing_requirements
    from training.checkpoint import save_checkpoint

    state, source = generator_state(args)
    checkpoint = scratch / "checkpoint.pt" if not args.ckpt else Path(args.ckpt)
    if not args.ckpt:
        save_checkpoint(checkpoint, {"config": {}, "epoch": 0, "step": 0, "G": state["G_ema"], **state})
    trt = args.device == "cuda" and missing_requirements() is None
    export_checkpoint(checkpoint, repository, "bamsgan", fp16=True, trt=trt, log=lambda line: None)
    return repository, f"fresh export of {source}{' with TensorRT' if trt else ''} (no version in {args.repository})"


def part_serving(args, deadline: float) -> dict:
    from serving.launcher import LaunchError, TritonServer, free_ports

    problem = serving_missing()
    if problem:
        return skipped(problem)
    warning = serving_engine_missing(args.device)
    with tempfile.TemporaryDirectory(prefix="bamsgan-gpu-check-") as scratch:
        repository, source = prepare_repository(args, Path(scratch))
        grpc_port, http_port, metrics_port = free_ports(3)
        server = TritonServer(repository, grpc_port, http_port, metrics_port, log_path=args.out / "logs" / "tritonserver.log")
        try:
            server.start(timeout=max(10.0, min(120.0, deadline - time.monotonic())))
        except LaunchError as error:
            return failed(f"Triton did not start: {str(error).splitlines()[0]}", source=source, log="logs/tritonserver.log")
        try:
            bench_out = args.out / "serving-bench"
            command = [sys.executable, "-m", "clients.benchmark", "--url", server.grpc_url, "--out", str(bench_out),
                       "--batch-sizes", ",".join(map(str, args.serve_batch_sizes)),
                       "--concurrency", ",".join(map(str, args.serve_concurrency)),
                       "--window", str(args.serve_window), "--warmup", str(args.serve_window / 2),
                       "--min-requests", "10", "--max-windows", "4", "--compare-raw", str(repository)]
            run = run_command(command, deadline, args.out / "logs" / "serving-benchmark.log")
        finally:
            server.stop()
        engine = served_engine(server.log_tail(400))
    record = {"source": source, "engine": engine, "warning": warning, "log": "logs/serving-benchmark.log",
              "server_log": "logs/tritonserver.log"}
    report_path = bench_out / "results.json"
    if run["returncode"] != 0 or not report_path.is_file():
        why = f"stopped at the part's cap after {run['seconds']} s" if run["timed_out"] else f"clients.benchmark exit {run['returncode']}"
        return failed(why, **record)
    bench = json.loads(report_path.read_text())
    errors = sum(r["errors"] for r in bench["results"])
    # The raw baseline is ONNX Runtime on the provider clients.benchmark found (CUDA where installed):
    # against a served TensorRT engine, served/raw compares two engines, not only the serving cost.
    raw = re.search(r"raw baseline: (\S+) on (\S+)", run["output"])
    record.update(status="failed" if errors else "ok", served_vs_raw=bench["served_vs_raw"], errors=errors,
                  raw_engine=f"ONNX Runtime {Path(raw[1]).name} on {raw[2]}" if raw else None,
                  results=[{k: r[k] for k in ("batch_size", "concurrency", "images_per_s", "p50_ms", "p99_ms", "errors")}
                           for r in bench["results"]])
    if errors:
        record["reason"] = f"{errors} failed requests (see {record['log']})"
    return record


def served_engine(log_text: str) -> str | None:
    """The engine line the Python backend logs when it loads ("bamsgan: TensorRT engine ...")."""
    lines = [line.split("bamsgan: ", 1)[1].strip() for line in log_text.splitlines() if "bamsgan: " in line]
    return lines[-1] if lines else None


# ---------------------------------------------------------------------------------------------
# Report


# ---------------------------------------------------------------------------------------------
# 6. GPU peers (optional)


def part_peers(args, deadline: float) -> dict:
    """This trainer, lightweight-gan and stylegan2-pytorch for a third each of the part's share, then FID."""
    from clients import gpu_peers

    reason = gpu_peers.NO_CUDA if args.device != "cuda" else gpu_peers.missing_reason()
    if reason is not None:
        return skipped(reason)
    minutes = (deadline - time.monotonic() - PEERS_SCORING_SECONDS) / 3 / 60
    peer_args = gpu_peers.parse_args(["--minutes", f"{minutes:.2f}", "--count", str(args.peer_count), "--out", str(args.out / "peers")])
    results = gpu_peers.compare(peer_args)
    record = {"status": "failed" if any("error" in r for r in results.values()) else "ok", "minutes": round(minutes, 2),
              "fid": {name: ((r.get("evaluation") or {}).get("metrics", {}).get("fid") or {}).get("value") for name, r in results.items()},
              "table": gpu_peers.table(results, minutes, args.peer_count), "report": "peers/"}
    errors = [f"{name}: {r['error']}" for name, r in results.items() if "error" in r]
    return record | ({"reason": "; ".join(errors)} if errors else {})


PART_FUNCTIONS = {"kernel": part_kernel, "attention": part_attention, "training": part_training,
                  "generator": part_generator, "serving": part_serving, "peers": part_peers}


def run_parts(args, clock: Clock) -> dict[str, dict]:
    records = {}
    for part in args.parts:
        started = time.monotonic()
        print(f"\n=== gpu-check: {part} ({clock.left():.0f} s of the budget left) ===", flush=True)
        if clock.too_little_for(part):
            record = skipped(f"budget spent ({clock.left():.0f} s left of --budget {clock.budget:g})")
        else:
            try:
                record = PART_FUNCTIONS[part](args, clock.part_deadline(part))
            except Exception as error:  # noqa: BLE001 - a crashing part is a finding, the others still run
                record = failed(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                                traceback=traceback.format_exc(limit=8))
        record["seconds"] = round(time.monotonic() - started, 1)
        records[part] = record
        print(f"--- {part}: {record['status']}{': ' + record['reason'] if record.get('reason') else ''}", flush=True)
    return records


def headline(part: str, record: dict) -> str:
    """One line of figures per part for the summary table."""
    if record["status"] == "skipped":
        return record["reason"]
    if part == "kernel" and "tests" in record:
        counts = record["tests"]
        return f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped"
    if part == "attention" and record.get("records"):
        # The largest attention (G at 32x32, N = 1,024) dominates the cost: its ms per impl and pass.
        largest = max(r["n"] for r in record["records"])
        rows = [r for r in record["records"] if r["n"] == largest]
        return f"{rows[0]['shape']} B={rows[0]['batch']}: " + "; ".join(
            f"{p} " + ", ".join(f"{r['impl']} {r['ms']:.2f} ms" for r in rows if r["pass"] == p)
            for p in dict.fromkeys(r["pass"] for r in rows))
    if part == "training" and record.get("configs"):
        return ", ".join(f"{r['config']} {r['images_per_s']:.0f} img/s {r['peak_mib']:.0f} MiB" if r["status"] == "ok"
                         else f"{r['config']} {r['status']}" for r in record["configs"])
    if part == "generator" and record.get("engines"):
        biggest = max(record["batch_sizes"])
        rates = {name: r["batches"][biggest]["images_per_s"] for name, r in record["engines"].items()
                 if r["status"] == "ok" and biggest in r["batches"]}
        if rates:
            best = max(rates, key=rates.get)
            return f"best at B={biggest}: {best} {rates[best]:,.0f} faces/s; {len(rates)}/{len(record['engines'])} engines ran"
    if part == "peers" and record.get("fid"):
        return f"FID at {record['minutes']:g} GPU minutes each: " + ", ".join(
            f"{name} {'n/a' if fid is None else f'{fid:.1f}'}" for name, fid in record["fid"].items())
    if part == "serving" and record.get("served_vs_raw"):
        ratios = ", ".join(f"B={r['batch_size']} {r['served_images_per_s']:,.0f} faces/s ({r['ratio']:.2f} of raw)"
                           for r in record["served_vs_raw"])
        return f"{ratios}; engine: {record.get('engine') or 'unknown'}"
    return record.get("reason", "")


def format_report(report: dict) -> str:
    gpu = report["host"].get("gpu") or {}
    lines = [f"gpu-check on {gpu.get('name', report['settings']['device'])}: torch {report['host']['torch']}, "
             f"total {report['seconds']:.0f} s of --budget {report['settings']['budget']:g}", ""]
    lines.append(f"{'part':<10} {'status':<8} {'s':>6}  figures / why")
    lines.append("-" * 100)
    for part, record in report["parts"].items():
        lines.append(f"{part:<10} {record['status']:<8} {record['seconds']:>6.1f}  {headline(part, record)}")
    for part, record in report["parts"].items():
        if record.get("table"):
            lines += ["", f"[{part}]", record["table"]]
        if part == "training" and record.get("configs"):
            lines += ["", f"[training] preset {record['preset']}, batch {record['batch_size']}, {record['steps']} timed steps",
                      f"{'config':<16} {'images/s':>10} {'peak MiB':>10}"]
            lines += [f"{r['config']:<16} {r['images_per_s']:>10.1f} {r['peak_mib']:>10.0f}" if r["status"] == "ok"
                      else f"{r['config']:<16} {r['status']}: {r['reason']}" for r in record["configs"]]
        if part == "serving" and record.get("served_vs_raw"):
            lines += ["", f"[serving] {record['source']}; engine: {record.get('engine')}; raw: {record.get('raw_engine')}",
                      f"{'batch':>5} {'served faces/s':>15} {'at c':>5} {'raw faces/s':>12} {'served/raw':>10}"]
            lines += [f"{r['batch_size']:>5} {r['served_images_per_s']:>15.1f} {r['served_concurrency']:>5} "
                      f"{r['raw_images_per_s']:>12.1f} {r['ratio']:>10.2f}" for r in record["served_vs_raw"]]
        if record.get("warning"):
            lines.append(f"[{part}] warning: {record['warning']}")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


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


def part_list(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ALL_PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown or text!r}; choose among {', '.join(ALL_PARTS)}")
    return [p for p in ALL_PARTS if p in parts]  # the report's order, whatever the flag's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=part_list, default=list(PARTS),
                        help=f"comma-separated among {', '.join(ALL_PARTS)} (default {','.join(PARTS)}; peers trains for minutes: "
                             "give it a --budget of 1,200 s or more)")
    parser.add_argument("--peer-count", type=int, default=5000, help="peers: faces per generator scored (default %(default)s)")
    parser.add_argument("--budget", type=float, default=None, help=f"seconds for the whole run (default {DEFAULTS['budget']})")
    parser.add_argument("--quick", action="store_true",
                        help="half the budget and fewer timed runs: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--out", type=Path, help="report directory (default out/gpu-check-<time>)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the tool (default cuda)")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "model_repository",
                        help="model repository whose newest version is served (default %(default)s)")
    parser.add_argument("--ckpt", help="checkpoint whose EMA generator the generator part times (default: fresh weights)")
    parser.add_argument("--channels", type=int, default=64, help="model width c for attention shapes and fresh weights (default 64, the paper's)")
    parser.add_argument("--attention-batch", type=int, default=256, help="attention part batch (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help=f"attention: timed runs per measurement (default {DEFAULTS['repeats']})")
    parser.add_argument("--warmup", type=int, default=3, help="attention: untimed runs first, also autotuning (default %(default)s)")
    parser.add_argument("--train-steps", type=int, default=None, help=f"training: timed steps per configuration (default {DEFAULTS['train_steps']})")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 64, 256, 1024], help="generator batch sizes (default 1,64,256,1024)")
    parser.add_argument("--engines", type=lambda text: [e for e in text.split(",") if e], default=None,
                        help="generator engines (export.benchmark names; default: every one for the device)")
    parser.add_argument("--seconds", type=float, default=None, help=f"generator: timed seconds per engine and batch (default {DEFAULTS['seconds']})")
    parser.add_argument("--windows", type=int, default=None, help=f"generator: timed windows per engine and batch (default {DEFAULTS['windows']})")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime/torch on CPU (default: free cores)")
    parser.add_argument("--serve-batch-sizes", type=int_list, default=[64, 256], help="serving batch sizes (default 64,256)")
    parser.add_argument("--serve-concurrency", type=int_list, default=[4, 16], help="serving concurrency (default 4,16)")
    parser.add_argument("--serve-window", type=float, default=None, help=f"serving measurement window, s (default {DEFAULTS['serve_window']})")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:  # an explicit flag wins over --quick
            setattr(args, name, value)
    if args.budget <= 0 or args.seconds <= 0 or args.serve_window <= 0:
        parser.error("--budget, --seconds and --serve-window must be positive")
    if min(args.channels, args.attention_batch, args.repeats, args.train_steps, args.windows) < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--channels, --attention-batch, --repeats, --train-steps, --windows must be positive; --warmup, --threads >= 0")
    if args.ckpt and not Path(args.ckpt).is_file():
        parser.error(f"--ckpt: no file at {args.ckpt}")
    if args.engines is not None:
        from export.benchmark import ORT_ENGINES, TENSORRT_ENGINE, TORCH_ENGINES

        known = TORCH_ENGINES + ORT_ENGINES + (TENSORRT_ENGINE,)
        unknown = [e for e in args.engines if e not in known]
        if unknown or not args.engines:
            parser.error(f"--engines: unknown {unknown}; choose among {', '.join(known)}")
    args.out = args.out or REPO_ROOT / "out" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    clock = Clock(args.budget, args.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    host = host_info()
    print(f"gpu-check: {(host['gpu'] or {}).get('name', 'CPU dry run')}, torch {host['torch']}, parts {', '.join(args.parts)}, "
          f"budget {args.budget:g} s, report in {args.out}", flush=True)
    parts = run_parts(args, clock)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"tool": "clients.gpu_check", "format_version": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": round(args.budget - clock.left(), 1), "settings": settings, "host": host,
              "parts": {**{p: skipped("not asked for (--parts)") | {"seconds": 0.0} for p in PARTS if p not in parts}, **parts}}
    report["parts"] = {p: report["parts"][p] for p in ALL_PARTS if p in report["parts"]}
    table = format_report(report)
    write_atomic(args.out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(args.out / "report.txt", table + "\n")
    print("\n" + table)
    print(f"\nwrote {args.out / 'report.json'} and {args.out / 'report.txt'}")
    return 1 if any(r["status"] == "failed" for r in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
