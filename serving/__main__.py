"""`python -m serving` (make serve): serve the model repository with Triton until Ctrl-C / SIGTERM.

    python -m serving --model-repository model_repository --grpc-port 8001 --http-port 8000 --metrics-port 8002

Exit codes: 0 after a clean shutdown; 2 for a problem you can fix: busy port, no exported model,
no tritonserver (one line on stderr), or a model that fails to load (its reason, then the end of
the server log); 1 when the server exits on its own after it was ready (its Python-backend stubs
are ended and its shared memory removed first, so a restart on the same ports works at once).

Health checks (Kubernetes probes): HTTP GET /v2/health/live and /v2/health/ready on the HTTP port
(open even while HTTP inference is guarded off), or gRPC grpc.health.v1.Health/Check on the gRPC port.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from serving import launcher
from serving.launcher import LaunchError, TritonServer


def add_server_options(parser: argparse.ArgumentParser, port_help: str = "default: %(default)s") -> None:
    """The options of one Triton server, shared by `python -m serving` and `python -m serving.replicas`."""
    parser.add_argument("--model-repository", default="model_repository", help="model repository folder (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=launcher.DEFAULT_GRPC_PORT, help=port_help)
    parser.add_argument("--http-port", type=int, default=launcher.DEFAULT_HTTP_PORT, help=port_help)
    parser.add_argument("--metrics-port", type=int, default=launcher.DEFAULT_METRICS_PORT, help=port_help)
    parser.add_argument("--address", default=launcher.DEFAULT_ADDRESS, help="address to listen on, 0.0.0.0 for all (default: %(default)s)")
    parser.add_argument("--cache-mib", type=int, default=launcher.DEFAULT_RESPONSE_CACHE_MIB,
                        help="response cache size in MiB, 0 = off (default: %(default)s)")
    parser.add_argument("--poll-seconds", type=int, default=launcher.DEFAULT_POLL_SECONDS,
                        help="rescan the repository for new exports every N s, 0 = never (default: %(default)s)")
    parser.add_argument("--http-inference", action="store_true",
                        help="also serve inference over HTTP (unguarded: Triton 2.41 and 2.51 allocate a request's declared "
                             "shape before checking it; trusted networks only). Default: HTTP serves health/metadata only")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the models to load")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    add_server_options(parser)
    parser.add_argument("--log-file", default=None, help="tritonserver log (default: a temporary file)")
    return parser.parse_args(argv)


class _Stop(BaseException):
    """SIGTERM/SIGINT. A BaseException, as KeyboardInterrupt is: start-up polls the server with
    `suppress(Exception)`, which must not swallow a stop that arrives while it waits."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


def server_from_args(args: argparse.Namespace) -> TritonServer:
    """The TritonServer this command line describes (tests/test_k8s.py checks the pod's command with it)."""
    return TritonServer(
        args.model_repository, args.grpc_port, args.http_port, args.metrics_port, args.address, args.log_file,
        cache_mib=args.cache_mib, poll_seconds=args.poll_seconds, http_inference=args.http_inference,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server = server_from_args(args)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The server runs in its own session, so a terminal's Ctrl-C reaches only us: forward it once.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        server.start(timeout=args.timeout)
        models = ", ".join(f"{name} (versions {', '.join(map(str, versions))})" for name, versions in server.models.items())
        print(f"Triton ready in {server.startup_seconds:.1f} s, serving {models} from {server.model_repository}", flush=True)
        print(f"  gRPC     {server.grpc_url}", flush=True)
        http_serves = "inference, health" if server.http_inference else "health, metadata; inference over gRPC only"
        print(f"  HTTP     http://{server.http_url} ({http_serves})", flush=True)
        print(f"  cache    {f'{server.cache_mib} MiB' if server.cache_mib else 'off'}; "
              f"new exports {f'loaded within {server.poll_seconds} s' if server.poll_seconds else 'need a restart'}", flush=True)
        print(f"  metrics  {server.metrics_url}", flush=True)
        print(f"  log      {server.log_path}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while server.running():
            time.sleep(0.5)
        code = server.process.returncode
        server.stop()  # ends its Python-backend stubs and removes its shared memory
        print(f"error: tritonserver exited on its own (code {code}); its stubs and shared memory were cleaned up"
              f"{server.failure_details()}", file=sys.stderr)
        return 1
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except _Stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("Stopping Triton ...", flush=True)
        code = server.stop()
        print("Triton stopped.", flush=True)
        return 0 if code in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
