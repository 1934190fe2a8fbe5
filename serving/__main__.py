"""`python -m serving` (make serve): serve the model repository with Triton until Ctrl-C / SIGTERM.

    python -m serving --model-repository model_repository --grpc-port 8001 --http-port 8000 --metrics-port 8002

Exit codes: 0 after a clean shutdown; 2 for a problem you can fix: busy port, no exported model,
no tritonserver (one line on stderr), or a model that fails to load (its reason, then the end of
the server log); 1 when the server exits on its own after it was ready.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from serving.launcher import LaunchError, TritonServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", default="model_repository", help="model repository folder (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="default: %(default)s")
    parser.add_argument("--http-port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--metrics-port", type=int, default=8002, help="default: %(default)s")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on, 0.0.0.0 for all (default: %(default)s)")
    parser.add_argument("--log-file", default=None, help="tritonserver log (default: a temporary file)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the models to load")
    return parser.parse_args(argv)


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = TritonServer(
        args.model_repository, args.grpc_port, args.http_port, args.metrics_port, args.address, args.log_file
    )
    # The server runs in its own session, so a terminal's Ctrl-C reaches only us: forward it once.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        server.start(timeout=args.timeout)
        models = ", ".join(f"{name} (versions {', '.join(map(str, versions))})" for name, versions in server.models.items())
        print(f"Triton ready in {server.startup_seconds:.1f} s, serving {models} from {server.model_repository}", flush=True)
        print(f"  gRPC     {server.grpc_url}", flush=True)
        print(f"  HTTP     http://{server.http_url}", flush=True)
        print(f"  metrics  {server.metrics_url}", flush=True)
        print(f"  log      {server.log_path}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while server.running():
            time.sleep(0.5)
        print(f"error: tritonserver exited on its own (code {server.process.returncode}){server.failure_details()}", file=sys.stderr)
        server.stop()
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
