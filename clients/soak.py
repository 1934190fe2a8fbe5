"""Soak and fault test (make soak): serve, load, check every byte, kill the server, restart, go on.

    python -m clients.soak --model-repository model_repository --seconds 600 --concurrency 64 --out out/soak

Starts its own tritonserver with the project's launcher (serving.launcher.TritonServer, the same
flags as make serve) on free local ports, then:

1. references: the image of every seed of the pool (--seeds), each asked for alone;
2. load: --concurrency threads for --seconds, each sending --batch random seeds of the pool per
   request and comparing every returned image byte for byte with its seed's reference;
3. fault: at --kill-at (a fraction of the run) the server gets SIGKILL; the launcher's clean-up
   must leave none of its processes and none of its shared memory, and the server restarts on the
   same ports. Meanwhile clients retry UNAVAILABLE with capped exponential backoff, as clients do;
4. a memory trace of the server and its Python-backend stubs (RSS, once a second).

Writes report.json and memory.png under --out; prints a summary. Exit code 0 when every answer
matched, no request failed after its retries and the clean-up left nothing; 1 otherwise; 2 for bad
arguments (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from clients.endpoints import deadline_parameters

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
BACKOFF_S, MAX_BACKOFF_S, GIVE_UP_S = 0.05, 1.0, 120.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clients.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", default="model_repository", help="served repository (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=300.0, help="load duration (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="seeds per request (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=512, help="seed pool size; repeated seeds exercise the cache (default: %(default)s)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="SIGKILL the server at this fraction of the run; 0 = never (default: %(default)s)")
    parser.add_argument("--cache-mib", type=int, default=None, help="server response cache (default: the launcher's)")
    parser.add_argument("--out", default="out/soak", help="folder for report.json and memory.png (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the server to start")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.batch < 1 or args.seeds < 1 or not 0 <= args.kill_at < 1:
        print("error: need --seconds > 0, --concurrency >= 1, --batch >= 1, --seeds >= 1 and 0 <= --kill-at < 1", file=sys.stderr)
        raise SystemExit(2)
    return args


def process_group_rss(process_group: int) -> tuple[int, int]:
    """(bytes, processes): resident memory of every live process in the group (server + stubs)."""
    from serving.launcher import group_members

    total, members = 0, group_members(process_group)
    for pid in members:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, len(members)


class Soak:
    def __init__(self, args, server):
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.args, self.server = args, server
        self.counts = Counter()  # answers, images, wrong, retries, failed
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.references: dict[int, bytes] = {}
        self.memory: list[dict] = []
        self.events: list[dict] = []
        self.started = time.monotonic()

    def request(self, client, seeds):
        seed_input = self.grpc.InferInput("SEED", [len(seeds), 1], "INT64")
        seed_input.set_data_from_numpy(np.asarray(seeds, dtype=np.int64).reshape(-1, 1))
        return client.infer("bamsgan", [seed_input], outputs=[self.grpc.InferRequestedOutput("IMAGE")],
                            client_timeout=60, parameters=deadline_parameters(60)).as_numpy("IMAGE")

    def request_with_retries(self, client, seeds):
        """Retry what a client should retry (server down or busy) with capped backoff; raise the rest."""
        from tritonclient.utils import InferenceServerException

        delay, deadline = BACKOFF_S, time.monotonic() + GIVE_UP_S
        while True:
            try:
                return self.request(client, seeds)
            except InferenceServerException as error:
                if str(error.status()) not in RETRYABLE or time.monotonic() > deadline:
                    raise
                with self.lock:
                    self.counts["retries"] += 1
                time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: restarted servers are not stampeded
                delay = min(2 * delay, MAX_BACKOFF_S)

    def make_references(self):
        with self.grpc.InferenceServerClient(self.server.grpc_url) as client:
            for seed in range(self.args.seeds):
                self.references[seed] = self.request(client, [seed])[0].tobytes()

    def client_loop(self, worker):
        rng = random.Random(worker)
        with self.grpc.InferenceServerClient(self.server.grpc_url) as client:
            while not self.stop.is_set():
                seeds = [rng.randrange(self.args.seeds) for _ in range(self.args.batch)]
                try:
                    images = self.request_with_retries(client, seeds)
                except Exception as error:  # counted and reported, the soak goes on
                    with self.lock:
                        self.counts["failed"] += 1
                        if len(self.failures) < 10:
                            self.failures.append(str(error).splitlines()[0])
                    continue
                wrong = sum(image.tobytes() != self.references[seed] for seed, image in zip(seeds, images))
                wrong += abs(len(images) - len(seeds))
                with self.lock:
                    self.counts["answers"] += 1
                    self.counts["images"] += len(images)
                    self.counts["wrong"] += wrong

    def trace_memory(self):
        while not self.stop.is_set():
            process = self.server.process
            if process is not None:
                rss, processes = process_group_rss(process.pid)
                with self.lock:
                    self.memory.append({"t": round(time.monotonic() - self.started, 2), "rss_bytes": rss,
                                        "processes": processes, "answers": self.counts["answers"]})
            self.stop.wait(1.0)

    def kill_and_restart(self):
        """SIGKILL the server under load, check the clean-up, restart on the same ports."""
        from serving.launcher import group_members

        process = self.server.process
        group, prefix = process.pid, self.server.shm_prefix
        before = {"processes": len(group_members(group)), "shm_regions": len(self.server.shm_regions())}
        killed_at = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.server.stop()  # what `python -m serving` does when its server dies: end the stubs, remove the shm
        after = {"processes": len(group_members(group)), "shm_regions": len(self.server.shm_regions())}
        self.server.start(timeout=self.args.timeout)
        self.events.append({
            "event": "sigkill+restart", "t": round(killed_at - self.started, 2), "before": before,
            "after_cleanup": after, "shm_prefix": prefix, "restart_seconds": round(time.monotonic() - killed_at, 2),
            "cleanup_ok": after == {"processes": 0, "shm_regions": 0},
        })

    def run(self):
        from tqdm import tqdm

        self.make_references()
        threads = [threading.Thread(target=self.client_loop, args=(i,), daemon=True) for i in range(self.args.concurrency)]
        threads.append(threading.Thread(target=self.trace_memory, daemon=True))
        self.started = time.monotonic()
        for thread in threads:
            thread.start()
        kill_at = self.args.seconds * self.args.kill_at if self.args.kill_at else None
        with tqdm(total=int(self.args.seconds), unit="s", desc="soak", file=sys.stderr, mininterval=1.0) as bar:
            while (elapsed := time.monotonic() - self.started) < self.args.seconds:
                if kill_at is not None and elapsed >= kill_at:
                    kill_at = None
                    self.kill_and_restart()
                time.sleep(0.25)
                bar.n = min(int(time.monotonic() - self.started), int(self.args.seconds))
                bar.set_postfix(answers=self.counts["answers"], wrong=self.counts["wrong"], failed=self.counts["failed"], refresh=False)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=GIVE_UP_S + 60)
        return time.monotonic() - self.started


def plot_memory(memory: list[dict], events: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.plot([m["t"] for m in memory], [m["rss_bytes"] / 2**20 for m in memory], label="server + stubs RSS")
    for event in events:
        axis.axvline(event["t"], color="red", linestyle="--", label="SIGKILL, clean-up, restart")
    axis.set_xlabel("seconds")
    axis.set_ylabel("MiB")
    axis.set_ylim(bottom=0)
    axis.legend(loc="lower right")
    axis.set_title("soak: server memory")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    from serving.launcher import LaunchError, TritonServer, free_ports

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = {} if args.cache_mib is None else {"cache_mib": args.cache_mib}
    server = TritonServer(args.model_repository, *free_ports(3), log_path=out / "tritonserver.log", **options)
    try:
        server.start(timeout=args.timeout)
        soak = Soak(args, server)
        seconds = soak.run()
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        server.stop()

    memory = [m for m in soak.memory if m["rss_bytes"]]
    steady = [m["rss_bytes"] for m in memory if m["t"] >= seconds / 10]  # after the first tenth: warm
    counts = dict(soak.counts)
    report = {
        "options": vars(args), "seconds": round(seconds, 1), "counts": counts, "failures": soak.failures,
        "answers_per_second": round(counts.get("answers", 0) / seconds, 1), "events": soak.events,
        "memory_mib": {"min": round(min(steady) / 2**20, 1), "max": round(max(steady) / 2**20, 1),
                       "first": round(steady[0] / 2**20, 1), "last": round(steady[-1] / 2**20, 1)} if steady else None,
        "memory_trace": memory,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_memory(memory, soak.events, out / "memory.png")

    cleanup_ok = all(event["cleanup_ok"] for event in soak.events)
    print(f"soak: {seconds:.0f} s at concurrency {args.concurrency}, batch {args.batch}, {args.seeds} seeds: "
          f"{counts.get('answers', 0)} answers ({report['answers_per_second']}/s), {counts.get('images', 0)} images, "
          f"{counts.get('wrong', 0)} wrong, {counts.get('failed', 0)} failed, {counts.get('retries', 0)} retries")
    for event in soak.events:
        print(f"  SIGKILL at {event['t']:.0f} s: {event['before']['processes']} processes and {event['before']['shm_regions']} "
              f"shm regions before, {event['after_cleanup']['processes']} and {event['after_cleanup']['shm_regions']} after "
              f"clean-up; serving again after {event['restart_seconds']:.1f} s")
    if report["memory_mib"]:
        m = report["memory_mib"]
        print(f"  memory (server + stubs, after warm-up): {m['min']:.0f}-{m['max']:.0f} MiB, first {m['first']:.0f}, last {m['last']:.0f}")
    print(f"  report {out / 'report.json'}, plot {out / 'memory.png'}")
    ok = counts.get("answers", 0) > 0 and not counts.get("wrong") and not counts.get("failed") and cleanup_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
