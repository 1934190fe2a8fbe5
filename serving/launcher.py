"""Start NVIDIA Triton Inference Server on a model repository and wait until its models are ready.

`TritonServer` is the one way this project starts Triton: `python -m serving` (make serve), the
tests' `triton_server` fixture and the clients' demo all use it.

    with TritonServer("model_repository", grpc_port=8001) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

It runs the `tritonserver` binary of the pip wheel nvidia-pytriton (or the one on PATH, as in
NVIDIA's container). The wheel's Python backend ships one stub per Python version, so we prepare a
backend directory of our own (symlinks, under .cache/) holding the stub for the running
interpreter, and start the server with this interpreter's bin/ first on PATH: the stub runs the
`python3` it finds there, so models see this virtual environment's packages (numpy < 2).

Production defaults, all built into the command line here (`TritonServer.command`), the one
definition of the server's flags that `make serve`, the tests and Kubernetes manifests share:

- Response cache (`--cache-config local,size=`): seed -> image is a pure function, and the model's
  config.pbtxt enables `response_cache`; Triton hashes the whole request, so clients that send one
  seed per request hit best. `cache_mib=0` turns it off.
- Model updates without restart (`--model-control-mode=poll`): Triton rescans the repository every
  `poll_seconds` and loads a newly exported version beside the serving one, then retires the old
  one (config.pbtxt's version_policy); export renames a finished version into place, so a scan
  never sees half a version. `poll_seconds=0`: model control none (a restart picks up exports).
- Guarded HTTP: Triton's HTTP frontend (2.41, still 2.51) allocates a request's declared input shape
  before it checks it (a 150-byte request declaring [1, 1e9] costs 4 GB and 20 s), so by default the HTTP
  port serves health, metadata, config and statistics only; inference, model loading and shared
  memory over HTTP are refused at once (403) unless `http_inference=True` (trusted networks only).
  gRPC, which checks shapes first, serves inference. Health probes: HTTP GET /v2/health/live and
  /v2/health/ready, or the standard gRPC health service (grpc.health.v1.Health/Check, "SERVING").
- Crash clean-up: the server and its Python-backend stubs share one process group (the server's
  own session); whenever the server stops or dies, `stop()` ends that group and removes the
  shared-memory regions named by this server's prefix, so a restart on the same ports works at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import deque
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "triton-backends"

# The server's defaults (`python -m serving`, make serve, Kubernetes manifests read these).
DEFAULT_ADDRESS = "127.0.0.1"  # 0.0.0.0 to listen on every interface (a container)
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_RESPONSE_CACHE_MIB = 256  # one cached 64x64x3 image is ~12 KiB: ~20k single-seed answers
DEFAULT_POLL_SECONDS = 5  # repository rescan interval for new exports; 0 = model control none
HTTP_GUARDED_APIS = "inference,model-repository,shared-memory"  # refused over HTTP unless opened
SHM_DIR = Path("/dev/shm")
GRPC_STARTUP_ABORT = "Check failed: wakeup_fd_->ConsumeWakeup().ok()"  # see TritonServer.start


class LaunchError(RuntimeError):
    """A problem the user can fix (busy port, no exported model, ...); its message is one line."""


def find_tritonserver() -> Path:
    """The tritonserver binary: the pip wheel's (nvidia-pytriton), else `tritonserver` on PATH."""
    wheel_binary = _pytriton_server_dir()
    if wheel_binary is not None and (wheel_binary / "bin" / "tritonserver").is_file():
        return wheel_binary / "bin" / "tritonserver"
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    raise LaunchError(
        "tritonserver not found: install the Python requirements (pip install -r requirements.txt, "
        "which brings nvidia-pytriton) or put NVIDIA's tritonserver on PATH"
    )


def _pytriton_server_dir() -> Path | None:
    """site-packages/pytriton/tritonserver of the nvidia-pytriton wheel, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def prepare_python_backend(binary: Path, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path | None:
    """A --backend-directory whose python/ holds the wheel's backend plus the stub for this Python.

    Returns None for a tritonserver outside the wheel (NVIDIA's container has its own backends).
    Symlinks, not copies: the wheel's libraries find their dependencies relative to
    site-packages/nvidia_pytriton.libs (and we also put that folder on LD_LIBRARY_PATH).
    """
    server_dir = binary.resolve().parent.parent
    wheel_python = server_dir / "backends" / "python"
    stubs = server_dir / "python_backend_stubs"
    if not stubs.is_dir():
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = ", ".join(sorted(p.name for p in stubs.iterdir() if p.is_dir()))
        raise LaunchError(f"the pip tritonserver has no Python backend stub for Python {version} (it has {available})")
    # One folder per wheel and Python: two environments (say Triton 2.41 and 2.51) must never
    # re-point each other's links while a server of the other is loading its backend.
    wheel_id = hashlib.sha256(str(server_dir.resolve()).encode()).hexdigest()[:10]
    try:
        return _link_backend(cache_dir / f"py{version}-{wheel_id}", wheel_python, stub)
    except OSError:  # read-only checkout: use a private temporary folder instead
        return _link_backend(Path(tempfile.mkdtemp(prefix="bamsgan-triton-backends-")), wheel_python, stub)


def _link_backend(backend_dir: Path, wheel_python: Path, stub: Path) -> Path:
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    targets = {path.name: path for path in wheel_python.iterdir() if path.is_file()}
    targets["triton_python_backend_stub"] = stub
    for name, target in targets.items():
        link = python_dir / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        # Atomic replace, so servers started at the same time never see a half-made link.
        partial = python_dir / f".{name}.{os.getpid()}.partial"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        partial.symlink_to(target.resolve())
        os.replace(partial, link)
    return backend_dir


def server_environment(binary: Path, own_stub: bool) -> dict[str, str]:
    """Environment for tritonserver; with our stub: this interpreter's bin/ first on PATH, its libpython.

    A tritonserver of its own (NVIDIA's container) keeps the environment: its stub is built for the
    container's Python, and a virtual environment of another Python version would break it.
    """
    env = dict(os.environ)
    if not own_stub:
        return env
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    library_dirs = []
    wheel_libs = binary.resolve().parent.parent.parent.parent / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        library_dirs.append(str(wheel_libs))
    # The stub links libpython3.X.so; prefer the running interpreter's own copy (same patch
    # release as the stdlib the stub will import) over whatever the system has.
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        library_dirs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        library_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)
    return env


def repository_models(repository: Path) -> dict[str, list[int]]:
    """{model name: sorted version numbers} of a model repository; LaunchError if it cannot serve."""
    if not repository.is_dir():
        raise LaunchError(f"model repository {repository} does not exist: run `make export` to publish a model")
    models = {
        config.parent.name: sorted(int(p.name) for p in config.parent.iterdir() if p.is_dir() and p.name.isdigit())
        for config in sorted(repository.glob("*/config.pbtxt"))
    }
    if not models:
        raise LaunchError(f"model repository {repository} holds no model (no */config.pbtxt)")
    for name, versions in models.items():
        if not versions:
            raise LaunchError(
                f"model '{name}' in {repository} has no exported version ({repository / name}/<N>/): run `make export` first"
            )
    return models


def check_port_free(address: str, port: int, what: str) -> None:
    """LaunchError if something already listens on address:port (checked the way servers bind)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR like the server itself: a port in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            option = f"--{what.lower()}-port"
            raise LaunchError(
                f"cannot use {what} port {port} on {address} ({error.strerror}): stop what uses it or choose another with {option}"
            ) from None


def free_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the OS reports free right now (bind to port 0)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((address, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def group_members(process_group: int) -> list[int]:
    """Live (not zombie) process ids in a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
            if int(fields[2]) == process_group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def _kill_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so no orphan keeps the ports."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """A tritonserver process serving `model_repository`; start() waits until every model is ready.

    The server runs in its own session (a terminal's Ctrl-C reaches only the caller, which stops it
    with stop(): SIGTERM, Triton drains in-flight requests and exits 0) and gets SIGTERM if the
    thread that started it dies, so a killed test run leaves no server holding ports.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike = "model_repository",
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        address: str = DEFAULT_ADDRESS,
        log_path: str | os.PathLike | None = None,
        extra_args: tuple[str, ...] = (),
        *,
        cache_mib: int = DEFAULT_RESPONSE_CACHE_MIB,
        poll_seconds: int = DEFAULT_POLL_SECONDS,
        http_inference: bool = False,
    ):
        self.model_repository = Path(model_repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.address = address
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        if cache_mib < 0 or poll_seconds < 0:
            raise LaunchError(f"cache size and poll interval must be >= 0, got {cache_mib} MiB and {poll_seconds} s")
        self.cache_mib, self.poll_seconds, self.http_inference = cache_mib, poll_seconds, http_inference
        # Python-backend shared-memory regions are named by prefix: a unique one per server, so
        # several servers on one machine never collide, and clean-up removes exactly ours.
        self.shm_prefix = f"bamsgan_{os.getpid()}_{secrets.token_hex(4)}_"
        self.models: dict[str, list[int]] = {}
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # Clients connect to the address the server listens on (loopback when it listens everywhere).
    @property
    def _client_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.address, self.address)

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def command(self, binary: Path, backend_dir: Path | None) -> list[str]:
        """The tritonserver command line: every server flag of the project is set here."""
        command = [
            str(binary),
            f"--model-repository={self.model_repository}",
            # The tracked config.pbtxt is the whole truth: nothing is filled in behind its back.
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
            "--allow-metrics=true",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.poll_seconds:
            command += ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_seconds}"]
        else:
            command.append("--model-control-mode=none")
        if self.cache_mib:
            command.append(f"--cache-config=local,size={self.cache_mib * 2**20}")
            caches = binary.resolve().parent.parent / "caches"  # the wheel's; NVIDIA's image uses its default
            if caches.is_dir():
                command.append(f"--cache-directory={caches}")
        if not self.http_inference:
            # Requests to these APIs must carry a header with a value nobody is told: refused (403)
            # before the body is read. Health, metadata, config and statistics stay open.
            command.append(f"--http-restricted-api={HTTP_GUARDED_APIS}:bamsgan-http-guard={secrets.token_hex(16)}")
        if backend_dir is not None:
            command.append(f"--backend-directory={backend_dir}")
        return command + list(self.extra_args)

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Check, launch and wait until ready; LaunchError (one line, + server log tail) otherwise."""
        if self.process is not None:
            raise RuntimeError("server already started")
        self.models = repository_models(self.model_repository)
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise LaunchError(f"the gRPC, HTTP and metrics ports must differ, got {ports}")
        for what, port in ports.items():
            check_port_free(self.address, port, what)
        binary = find_tritonserver()
        backend_dir = prepare_python_backend(binary)
        if self.log_path is None:  # one per port: a port serves one server at a time
            self.log_path = Path(tempfile.gettempdir()) / f"bamsgan-tritonserver-{self.grpc_port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for attempt in (1, 2):
            self._launch(binary, backend_dir, append=attempt > 1)
            try:
                self.wait_ready(timeout)
                break
            except LaunchError:
                # Triton 2.51's gRPC core now and then aborts while starting (about 1 start in 60
                # here: "ev_epoll1_linux.cc ... Check failed: wakeup_fd_->ConsumeWakeup().ok()").
                # Only that abort is started again, once; everything else is the user's to fix.
                aborted = GRPC_STARTUP_ABORT in self.log_tail(40)
                self.stop()
                if attempt == 2 or not aborted:
                    raise
            except BaseException:
                self.stop()
                raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def _launch(self, binary: Path, backend_dir: Path | None, append: bool = False) -> None:
        """Start tritonserver in its own session, its output into the log file."""
        try:
            log = open(self.log_path, "ab" if append else "wb")
        except PermissionError:  # someone else's file in a shared /tmp
            handle, name = tempfile.mkstemp(prefix=f"bamsgan-tritonserver-{self.grpc_port}-", suffix=".log")
            log, self.log_path = os.fdopen(handle, "wb"), Path(name)
        with log:
            self.process = subprocess.Popen(
                self.command(binary, backend_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(binary, own_stub=backend_dir is not None),
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we forward it once
                preexec_fn=_kill_with_parent,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until the server and every model of the repository are ready over gRPC, and the
        HTTP and metrics endpoints (unless disabled in extra_args) accept connections.

        Triton starts its endpoints one after another: gRPC can answer "ready" a moment before
        the metrics port listens, so a caller told "ready" must not find any endpoint closed.
        """
        import tritonclient.grpc as grpcclient

        ports = {name: port for name, port in (("HTTP", self.http_port), ("metrics", self.metrics_port))
                 if f"--allow-{name.lower()}=false" not in self.extra_args}
        deadline = time.monotonic() + timeout
        waiting_for = "the gRPC endpoint"
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise LaunchError(f"tritonserver exited (code {code}) before it was ready{self.failure_details()}")
                with contextlib.suppress(Exception):  # not listening yet
                    if not client.is_server_ready():
                        waiting_for = "server readiness"
                    elif not_ready := [name for name in self.models if not client.is_model_ready(name)]:
                        waiting_for = "model(s) " + ", ".join(not_ready)
                    elif closed := [f"{name} port {port}" for name, port in ports.items() if not self._accepts_connections(port)]:
                        waiting_for = "the " + " and ".join(closed)
                    else:
                        return
                if time.monotonic() > deadline:
                    raise LaunchError(f"tritonserver not ready after {timeout:.0f} s (still waiting for {waiting_for})"
                                      f"{self.failure_details()}")
                time.sleep(0.05)

    def _accepts_connections(self, port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self._client_host.strip("[]"), port), timeout=1.0):
            return True
        return False

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as log:
            tail = deque(log, maxlen=lines)
        return b"".join(tail).decode("utf-8", errors="replace").rstrip()

    def failure_details(self) -> str:
        """The server's own reason (e.g. why a model failed to load) and the end of its log."""
        lines = self.log_tail(200).splitlines()
        if not lines:
            return ""
        reasons = [line.split("] ", 1)[-1] for line in lines if "failed to load" in line]
        reason = f": {reasons[0]}" if reasons else ""
        tail = "\n".join([line for line in lines if not line.startswith(("+", "|"))][-8:])  # no status tables
        return f"{reason}\nserver log {self.log_path}, last lines:\n{tail}"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests, unloads models, exits 0); SIGKILL after timeout.

        Then, whether it stopped cleanly or had died: end what is left of its process group (the
        Python-backend stubs of a killed server live on otherwise, ~0.7 GB each) and remove its
        shared-memory regions. Returns the server's exit code.
        """
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.clean_up(process.pid)
        return process.returncode

    def clean_up(self, process_group: int) -> None:
        """SIGKILL the server's process group (its session: stubs included) and unlink its shm regions."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process_group, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_members(process_group) and time.monotonic() < deadline:
            time.sleep(0.05)  # killed, not yet reaped by init
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()

    def shm_regions(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
