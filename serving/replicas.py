"""`python -m serving.replicas` (make serve REPLICAS=N): N Triton servers on one machine, one model repository.

    python -m serving.replicas --replicas 2 --model-repository model_repository
    python -m clients.generate --url localhost:8001,localhost:8004 --seeds 0-255 --out grid.png

Replica i listens on the base ports + 3 i, so with the defaults replica 0 has HTTP 8000, gRPC
8001, metrics 8002 (what `make serve` uses), replica 1 HTTP 8003, gRPC 8004, metrics 8005, and
so on: every replica's three ports follow the previous one's. The clients take the gRPC endpoints
as one `--url a,b,...` (printed once all are ready) and fail over between them (clients.endpoints).

Each replica is a `serving.launcher.TritonServer`, started one after another from this process's
main thread (the launcher ties a server's life to the thread that started it). Ctrl-C / SIGTERM
stops them all together. A replica that exits on its own is reported on one line (with its log)
and the others keep serving; when the last one is gone the command exits.

Exit codes: 0 after a clean shutdown; 2 for a problem you can fix (bad ports, busy port, no
exported model, a replica that fails to start; all started ones are stopped again); 1 when a
replica exited on its own.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from serving import launcher
from serving.__main__ import add_server_options
from serving.launcher import LaunchError, TritonServer, check_port_free, repository_models

PORT_STRIDE = 3  # replica i: every base port + PORT_STRIDE * i
MAX_PORT = 65535


def replica_ports(replicas: int, grpc_port: int, http_port: int, metrics_port: int) -> list[tuple[int, int, int]]:
    """(gRPC, HTTP, metrics) ports of each replica; LaunchError if any two coincide or one is out of range."""
    ports = [tuple(base + PORT_STRIDE * i for base in (grpc_port, http_port, metrics_port)) for i in range(replicas)]
    flat = [port for triple in ports for port in triple]
    if min(flat) < 1 or max(flat) > MAX_PORT:
        raise LaunchError(f"{replicas} replicas need ports up to {max(flat)}; ports must be 1-{MAX_PORT}")
    if len(set(flat)) != len(flat):
        raise LaunchError(f"with gRPC {grpc_port}, HTTP {http_port}, metrics {metrics_port} two of {replicas} replicas' ports "
                          f"coincide (replica i adds {PORT_STRIDE} i to each): give consecutive base ports, like the defaults "
                          f"8001/8000/8002, or ones more than {PORT_STRIDE * (replicas - 1)} apart")
    return ports


class Replicas:
    """N TritonServers on consecutive ports, started and stopped together."""

    def __init__(self, model_repository, replicas: int, grpc_port: int = launcher.DEFAULT_GRPC_PORT,
                 http_port: int = launcher.DEFAULT_HTTP_PORT, metrics_port: int = launcher.DEFAULT_METRICS_PORT,
                 address: str = launcher.DEFAULT_ADDRESS, log_dir: str | Path | None = None, **server_options):
        """server_options: TritonServer's keyword options (cache_mib, poll_seconds, ...), the same for all."""
        if replicas < 1:
            raise LaunchError(f"--replicas must be at least 1, got {replicas}")
        self.servers = [
            TritonServer(model_repository, grpc, http, metrics, address,
                         log_path=Path(log_dir) / f"replica-{i}.log" if log_dir else None, **server_options)
            for i, (grpc, http, metrics) in enumerate(replica_ports(replicas, grpc_port, http_port, metrics_port))
        ]
        self.exited: dict[int, int | None] = {}  # replica index -> exit code, for those that died on their own

    @property
    def grpc_urls(self) -> list[str]:
        return [server.grpc_url for server in self.servers]

    def start(self, timeout: float = 120.0) -> "Replicas":
        """Start every replica (each waits until ready); on any failure stop the started ones and
        raise LaunchError naming the replica. Every port is checked first: a busy one fails before
        any replica spends seconds loading its models."""
        repository_models(self.servers[0].model_repository)
        for i, server in enumerate(self.servers):
            for what, port in (("gRPC", server.grpc_port), ("HTTP", server.http_port), ("metrics", server.metrics_port)):
                try:
                    check_port_free(server.address, port, what)
                except LaunchError as error:
                    raise LaunchError(f"replica {i}: {error}") from None
        try:
            for i, server in enumerate(self.servers):
                try:
                    server.start(timeout=timeout)
                except LaunchError as error:
                    raise LaunchError(f"replica {i} (gRPC port {server.grpc_port}): {error}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def poll(self) -> list[int]:
        """Indices of replicas that exited on their own since the last poll (reaped, leftovers removed)."""
        newly = []
        for i, server in enumerate(self.servers):
            if i not in self.exited and server.process is not None and not server.running():
                self.exited[i] = server.process.returncode
                server.stop()  # reaps it, ends its orphaned Python-backend stubs, removes its shared memory
                newly.append(i)
        return newly

    def running(self) -> list[TritonServer]:
        return [server for server in self.servers if server.running()]

    def stop(self) -> list[int | None]:
        """Stop every replica at once (SIGTERM to all, in parallel: each drains its own requests)."""
        codes: list[int | None] = [None] * len(self.servers)

        def stop_one(i: int) -> None:
            codes[i] = self.servers[i].stop()

        threads = [threading.Thread(target=stop_one, args=(i,)) for i in range(len(self.servers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return codes

    def __enter__(self) -> "Replicas":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2, help="number of Triton servers (default: %(default)s)")
    # Each replica is configured like `python -m serving` (one definition of the server's options):
    add_server_options(parser, port_help=f"replica 0's; replica i adds {PORT_STRIDE} i (default: %(default)s)")
    parser.add_argument("--log-dir", default=None, help="write replica-<i>.log here (default: one temporary file per replica)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error(f"--replicas must be at least 1, got {args.replicas}")
    return args


class _Stop(BaseException):
    """SIGTERM/SIGINT. A BaseException, as KeyboardInterrupt is: start-up polls the server with
    `suppress(Exception)`, which must not swallow a stop that arrives while it waits."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The servers run in their own sessions, so a terminal's Ctrl-C reaches only us: we stop them all.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    replicas = None
    try:
        replicas = Replicas(args.model_repository, args.replicas, args.grpc_port, args.http_port, args.metrics_port,
                            args.address, args.log_dir, cache_mib=args.cache_mib, poll_seconds=args.poll_seconds,
                            http_inference=args.http_inference)
        started = time.perf_counter()
        replicas.start(timeout=args.timeout)
        first = replicas.servers[0]
        models = ", ".join(f"{name} (versions {', '.join(map(str, versions))})" for name, versions in first.models.items())
        print(f"{len(replicas.servers)} Triton replicas ready in {time.perf_counter() - started:.1f} s, serving {models} "
              f"from {first.model_repository}", flush=True)
        for i, server in enumerate(replicas.servers):
            print(f"  replica {i}: gRPC {server.grpc_url}  HTTP http://{server.http_url}  metrics {server.metrics_url}  "
                  f"pid {server.process.pid}  log {server.log_path}", flush=True)
        print(f"clients: --url {','.join(replicas.grpc_urls)}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while True:
            for i in replicas.poll():
                server, alive = replicas.servers[i], len(replicas.running())
                print(f"error: replica {i} (gRPC {server.grpc_url}) exited on its own (code {replicas.exited[i]}); "
                      f"{alive} of {len(replicas.servers)} still serving; its log: {server.log_path}", file=sys.stderr, flush=True)
            if not replicas.running():
                print(f"error: all {len(replicas.servers)} replicas have exited", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except _Stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if replicas is None:
            return 0
        print(f"Stopping {len(replicas.running())} Triton replica(s) ...", flush=True)
        codes = replicas.stop()
        print("Triton replicas stopped.", flush=True)
        clean = all(code in (0, None) for code in codes) and not replicas.exited
        return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
