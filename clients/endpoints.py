"""Several Triton replicas behind one client: parse `--url a,b,c`, spread requests, fail over.

    with EndpointPool(parse_endpoints("localhost:8001,localhost:8004"), "bamsgan") as pool:
        config = pool.connect()                      # probe every replica, skip dead ones
        result = pool.call(lambda client: client.infer(...))

Seeds are deterministic and a request is idempotent (the same seeds give the same bytes from any
replica serving the same version), so failover needs no bookkeeping: a request whose replica
failed is simply sent again to another live one. What happens depends on the gRPC status
(`classify`, the one definition both clients use):

- UNAVAILABLE (connection refused or reset, a server shutting down) and DEADLINE_EXCEEDED: the
  replica is marked down and the request goes at once to another live replica. A background
  thread re-probes down replicas every `probe_interval_s` (server ready, model ready, same model
  versions as the others) and brings them back. A deadline is not re-sent to the replica that
  missed it: with no other replica live it fails (asking a slow server again does not help).
- A live server refusing load: RESOURCE_EXHAUSTED, or UNAVAILABLE from a Triton queue policy
  ("Exceeds maximum queue size", "Request timeout expired"; this project's config.pbtxt has none
  because of the lone-request stall: with a queue policy, Triton's dynamic batcher let a lone
  client's requests wait ~500 ms, see model_repository/bamsgan/config.pbtxt; a deployment may add
  one). Backed off (backoff_s, doubling each time) and re-sent, never marked down.
  With retry_busy=False it is the caller's result: a benchmark measures refusals, not hides them.
- Anything else (INVALID_ARGUMENT, NOT_FOUND, INTERNAL, ...): fails at once, one line.

Every re-send counts against `retries` (per request); when no replica is live the request waits,
with the same backoff and at most `retries` times, for one to come back (probing the down ones). Every gRPC call carries a timeout, so
nothing hangs: a blackholed address costs `probe_timeout_s` at start, a stalled server `timeout`.
Requests go to the live replica with the fewest requests in flight (round-robin among equals),
so a faster replica takes more of the work.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import tritonclient.grpc as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

DEFAULT_URL = "localhost:8001"
MODEL = "bamsgan"
BACKOFF_S = 0.25  # first retry delay; doubles every retry
PROBE_INTERVAL_S = 1.0  # how often a down replica is re-probed
PROBE_TIMEOUT_S = 5.0  # per probe call: a dead replica must not hold up the live ones

# What a failed call means (classify): the replica is gone, its queue is full, or the request is bad.
DOWN, BUSY, FATAL = "down", "busy", "fatal"
DOWN_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
BUSY_STATUSES = ("StatusCode.RESOURCE_EXHAUSTED",)
RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")  # worth retrying on one server
# Triton's queue policy (REJECT) answers UNAVAILABLE with these: the server is up, its queue is full.
# The last is the model's own refusal of a request whose deadline passed while it queued: with no
# queue policy (the lone-request stall, see model_repository/bamsgan/config.pbtxt), the clients'
# deadlines bound an overloaded queue instead.
DEADLINE_REFUSAL = "deadline passed while queued"  # the start of model.py's DEADLINE_REFUSAL
QUEUE_REFUSALS = ("Exceeds maximum queue size", "Request timeout expired", DEADLINE_REFUSAL)
# Request parameter: when the client stops waiting (Unix time, ms), so the model can skip a request
# nobody waits for any more instead of computing it (Triton computes requests whose clients left).
DEADLINE_PARAMETER = "deadline_unix_ms"


def deadline_parameters(timeout: float | None) -> dict[str, int]:
    """Request parameters carrying the deadline of a request sent now with `timeout` seconds ({} for none)."""
    return {} if timeout is None else {DEADLINE_PARAMETER: int((time.time() + timeout) * 1000)}


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]+)$")


class TritonClientError(RuntimeError):
    """A one-line, user-facing error (server down, model missing, request rejected).

    status: the gRPC status behind it ("StatusCode.UNAVAILABLE", ...) when there is one, so a
    benchmark can count failures by kind.
    """

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Endpoints


def normalize_url(url: str) -> str:
    """tritonclient wants HOST:PORT; accept grpc://HOST:PORT too."""
    return url.strip().removeprefix("grpc://")


def parse_endpoints(text: str | list[str]) -> list[str]:
    """'a:8001,b:8004' (or a list) -> ['a:8001', 'b:8004']; ValueError naming the bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = []
    for item in items:
        url = normalize_url(item)
        if not url:
            raise ValueError(f"empty endpoint in {text!r}: give HOST:PORT[,HOST:PORT...]")
        if "://" in url:
            raise ValueError(f"endpoint {item.strip()!r} is not gRPC: give HOST:PORT (or grpc://HOST:PORT)")
        match = _HOST_PORT.match(url)
        if match is None:
            raise ValueError(f"endpoint {item.strip()!r} is not HOST:PORT")
        if not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"endpoint {item.strip()!r}: port must be 1-65535")
        if url in endpoints:
            raise ValueError(f"endpoint {url} is listed twice")
        endpoints.append(url)
    return endpoints


def endpoints_argument(text: str) -> list[str]:
    """argparse type for --url: one or more gRPC endpoints, comma-separated."""
    import argparse

    try:
        return parse_endpoints(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def channel_args() -> list[tuple[str, int]]:
    """gRPC channel options for every client of a replica.

    tritonclient's message limits, and short reconnect backoffs: gRPC's defaults grow to 120 s,
    during which a channel fails every call at once, so a restarted replica would stay "down".
    min_reconnect_backoff_ms is also gRPC's connect timeout (default 20 s): a replica that takes
    TCP connections but never speaks HTTP/2 counts as unreachable after 2 s.
    """
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 2000),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


# ---------------------------------------------------------------------------------------------
# Errors


def queue_refusal(error: InferenceServerException) -> bool:
    """A live server's queue policy refused the request (UNAVAILABLE, but nothing is down)."""
    return str(error.status()) == "StatusCode.UNAVAILABLE" and any(text in (error.message() or "") for text in QUEUE_REFUSALS)


def classify(error: InferenceServerException) -> str:
    """DOWN (replica gone: fail over), BUSY (full queue: back off) or FATAL (do not retry)."""
    status = str(error.status())
    if status in BUSY_STATUSES or queue_refusal(error):
        return BUSY
    if status in DOWN_STATUSES:
        return DOWN
    return FATAL


def status_name(error: InferenceServerException) -> str:
    return str(error.status()).removeprefix("StatusCode.")


def describe_error(error: InferenceServerException, url: str, timeout: float | None) -> str:
    """The one-line message for a failed gRPC call."""
    status = status_name(error)
    if DEADLINE_REFUSAL in (error.message() or ""):
        within = f" within {timeout:g} s" if timeout else " in time"
        return f"Triton at {url} is too busy to answer{within} and refused the request uncomputed ({status}); raise --timeout or retry later"
    if queue_refusal(error):
        return f"Triton at {url} refused the request, its queue is full ({status}: {error.message()}); send less at once or retry later"
    if status == "UNAVAILABLE":
        return f"cannot reach Triton at {url} (UNAVAILABLE) — is `make serve` running?"
    if status == "DEADLINE_EXCEEDED":
        within = f" within {timeout:g} s" if timeout else ""
        return f"Triton at {url} did not answer{within} (DEADLINE_EXCEEDED); raise --timeout"
    return f"Triton at {url} failed the request ({status}): {error.message()}"


def call_with_retries(call, retries: int, backoff_s: float = BACKOFF_S):
    """Run call() on one server; retry retryable gRPC errors `retries` times with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return call()
        except InferenceServerException as error:
            if str(error.status()) not in RETRYABLE or attempt == retries:
                raise
            time.sleep(backoff_s * 2**attempt)


def served_models(client: grpcclient.InferenceServerClient, timeout: float | None = None) -> list[str]:
    """Names of the models in the server's repository, with their state when not READY."""
    index = client.get_model_repository_index(as_json=True, client_timeout=timeout).get("models", [])
    return sorted({m["name"] if m.get("state") == "READY" else f"{m['name']} ({m.get('state', '?')})" for m in index})


def not_served_message(client, url: str, model: str, timeout: float | None) -> str:
    try:
        names = ", ".join(served_models(client, timeout)) or "none"
    except InferenceServerException:
        names = "unknown"
    return f"model '{model}' is not served at {url}; served models: {names}"


def model_config(client, url: str, model: str, timeout: float | None = None, retries: int = 0) -> dict:
    """The served model's config (dict); TritonClientError naming the served models if it is missing."""
    try:
        return call_with_retries(lambda: client.get_model_config(model, as_json=True, client_timeout=timeout), retries)["config"]
    except InferenceServerException as error:
        if error.status() != "StatusCode.NOT_FOUND" and "unknown model" not in error.message():
            raise TritonClientError(describe_error(error, url, timeout)) from None
        raise TritonClientError(not_served_message(client, url, model, timeout)) from None


# ---------------------------------------------------------------------------------------------
# The pool


@dataclass
class Endpoint:
    url: str
    up: bool = True
    reason: str = ""  # why it is down
    in_flight: int = 0
    answered: int = 0  # successful calls
    failed: int = 0  # calls that failed (and were re-sent or raised)
    client: grpcclient.InferenceServerClient | None = field(default=None, repr=False)


class EndpointPool:
    """Replicas of one model: which are live, which to use next, what to do when a call fails.

    Thread-safe: `call` may run in many threads at once. The state methods (`acquire`, `release`,
    `failed`) never block, so an asyncio client can drive the same policy with its own clients.
    """

    def __init__(
        self,
        urls: list[str] | str,
        model: str = MODEL,
        timeout: float | None = 60.0,
        retries: int = 3,
        backoff_s: float = BACKOFF_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        log: Callable[[str], None] | None = None,
        retry_busy: bool = True,
    ):
        self.endpoints = [Endpoint(url) for url in parse_endpoints(urls)]
        self.model, self.timeout, self.retries, self.backoff_s = model, timeout, retries, backoff_s
        self.probe_interval_s, self.probe_timeout_s = probe_interval_s, probe_timeout_s
        self.log = log or (lambda line: None)
        self.retry_busy = retry_busy  # False: a full queue is the caller's result (a benchmark counts it)
        self.versions: list[str] | None = None  # what every replica must serve (set by connect)
        self.config: dict | None = None  # the model config (set by connect)
        self.resent = 0  # requests sent again after a failure
        self._lock = threading.Lock()
        self._live = threading.Condition(self._lock)  # notified when a replica comes back
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None
        for endpoint in self.endpoints:
            endpoint.client = grpcclient.InferenceServerClient(endpoint.url, channel_args=channel_args())

    @property
    def urls(self) -> list[str]:
        return [endpoint.url for endpoint in self.endpoints]

    def live(self) -> list[Endpoint]:
        return [endpoint for endpoint in self.endpoints if endpoint.up]

    # -- start: probe every replica once --------------------------------------------------------

    def _inspect(self, endpoint: Endpoint) -> tuple[dict, list[str]]:
        """(model config, served versions) of one replica.

        InferenceServerException when it cannot answer; TritonClientError when it answers but
        does not serve the model (a misconfigured replica: never skipped silently).
        """
        timeout = self.probe_timeout()
        client = endpoint.client
        try:
            config = client.get_model_config(self.model, as_json=True, client_timeout=timeout)["config"]
        except InferenceServerException as error:
            if str(error.status()) == "StatusCode.NOT_FOUND" or "unknown model" in error.message():
                raise TritonClientError(not_served_message(client, endpoint.url, self.model, timeout)) from None
            raise
        versions = client.get_model_metadata(self.model, as_json=True, client_timeout=timeout).get("versions", [])
        return config, sorted(versions, key=int)

    def probe_timeout(self) -> float:
        """A probe's deadline: probe_timeout_s, or the request timeout when that is shorter."""
        return self.probe_timeout_s if self.timeout is None else min(self.probe_timeout_s, self.timeout)

    def _try_inspect(self, endpoint: Endpoint):
        try:
            return self._inspect(endpoint)
        except (InferenceServerException, TritonClientError) as error:
            return error

    def connect(self) -> dict:
        """Probe every replica; skip (and report) dead ones; return the model config.

        TritonClientError when none is reachable after `retries` rounds (a restarting server gets
        backoff_s, 2 backoff_s, ...), when a reachable replica does not serve the model, or when
        live replicas serve different versions (the same seed would give different faces).
        Connects once: later calls return the same config.
        """
        if self.config is not None:
            return self.config
        for attempt in range(self.retries + 1):
            with ThreadPoolExecutor(len(self.endpoints)) as executor:
                answers = list(executor.map(self._try_inspect, self.endpoints))
            for answer in answers:
                if isinstance(answer, TritonClientError):
                    raise answer
            live = [(endpoint, answer) for endpoint, answer in zip(self.endpoints, answers) if isinstance(answer, tuple)]
            if live or attempt == self.retries:
                break
            time.sleep(self.backoff_s * 2**attempt)
        dead = [(endpoint, answer) for endpoint, answer in zip(self.endpoints, answers) if not isinstance(answer, tuple)]
        if not live:
            if len(dead) == 1:
                endpoint, error = dead[0]
                raise TritonClientError(self._probe_error(error, endpoint.url))
            reasons = ", ".join(f"{endpoint.url} ({status_name(error)})" for endpoint, error in dead)
            raise TritonClientError(f"cannot reach Triton at any of {reasons} — is `make serve` running?")
        versions = {endpoint.url: answer[1] for endpoint, answer in live}
        if len({tuple(v) for v in versions.values()}) > 1:
            listed = ", ".join(f"{url} {v}" for url, v in versions.items())
            raise TritonClientError(f"replicas serve different versions of '{self.model}' ({listed}): "
                                    f"the same seed would give different faces; serve one version everywhere")
        self.versions = live[0][1][1]
        for endpoint, error in dead:
            self._set_down(endpoint, self._probe_error(error, endpoint.url))
            self.log(f"warning: skipping replica {endpoint.url}: {endpoint.reason}; using {len(live)} of {len(self.endpoints)}")
        self._start_prober()
        # The smallest limit of any replica, so a request fits everywhere it may be re-sent.
        self.config = min((answer[0] for _, answer in live), key=lambda config: int(config.get("max_batch_size", 0)))
        return self.config

    def _probe_error(self, error: InferenceServerException, url: str) -> str:
        if str(error.status()) == "StatusCode.DEADLINE_EXCEEDED":
            return f"Triton at {url} did not answer a health probe within {self.probe_timeout():g} s (DEADLINE_EXCEEDED)"
        return describe_error(error, url, self.timeout)

    # -- state ----------------------------------------------------------------------------------

    def acquire(self) -> Endpoint | None:
        """The live replica with the fewest requests in flight (round-robin among equals), or None."""
        with self._lock:
            live = self.live()
            if not live:
                return None
            turn = next(self._turn)
            endpoint = min(live, key=lambda e: (e.in_flight, (self.endpoints.index(e) - turn) % len(self.endpoints)))
            endpoint.in_flight += 1
            return endpoint

    def release(self, endpoint: Endpoint, ok: bool) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            if ok:
                endpoint.answered += 1
            else:
                endpoint.failed += 1

    def _set_down(self, endpoint: Endpoint, reason: str, status: str | None = None) -> None:
        """Mark `endpoint` down; with `status` (a failed request), say so once per outage."""
        with self._lock:
            was_up, endpoint.up, endpoint.reason = endpoint.up, False, reason
            live = len(self.live())
        if was_up and status:
            self.log(f"warning: replica {endpoint.url} is down ({status}); {live} of {len(self.endpoints)} live"
                     + (", its requests go to the others" if live else ""))

    def _set_up(self, endpoint: Endpoint) -> None:
        with self._live:
            was_up, endpoint.up, endpoint.reason = endpoint.up, True, ""
            self._live.notify_all()
        if not was_up:
            self.log(f"replica {endpoint.url} is back")

    def failed(self, endpoint: Endpoint, error: InferenceServerException, attempt: int) -> float:
        """A call to `endpoint` failed on its `attempt`-th try (1, 2, ...): mark the replica and
        return the delay before the re-send, or raise TritonClientError if it must not be re-sent."""
        kind = classify(error)
        message = describe_error(error, endpoint.url, self.timeout)
        if kind == FATAL or (kind == BUSY and not self.retry_busy) or attempt > self.retries:
            raise TritonClientError(message, str(error.status()))
        if kind == DOWN:
            deadline = str(error.status()) == "StatusCode.DEADLINE_EXCEEDED"
            if deadline and not any(e.up for e in self.endpoints if e is not endpoint):
                raise TritonClientError(message, str(error.status()))  # no other replica to ask; it would stall again
            self._set_down(endpoint, message, status_name(error))
        with self._lock:
            self.resent += 1
        return self.backoff_s * 2 ** (attempt - 1) if kind == BUSY else 0.0

    def all_down_message(self) -> str:
        if len(self.endpoints) == 1:
            return self.endpoints[0].reason or f"cannot reach Triton at {self.endpoints[0].url}"
        return "every replica is down: " + "; ".join(f"{e.url}: {e.reason}" for e in self.endpoints)

    def probe_down(self) -> None:
        """Probe every down replica now (a caller with nothing to send to does not wait for the prober)."""
        for endpoint in [e for e in self.endpoints if not e.up]:
            self.probe(endpoint)

    # -- the drivers: synchronous (threads) and asyncio ------------------------------------------

    def call(self, send: Callable[[grpcclient.InferenceServerClient], object]):
        """send(client) on a live replica, failing over / backing off by the policy above.

        With no replica live: wait backoff_s, 2 backoff_s, ... (`retries` times in all) for one to
        come back, probing the down ones after each wait.
        """
        attempt = waits = 0
        while True:
            endpoint = self.acquire()
            if endpoint is None:
                waits += 1
                if waits > self.retries:
                    raise TritonClientError(self.all_down_message(), "StatusCode.UNAVAILABLE")
                with self._live:
                    self._live.wait_for(lambda: bool(self.live()) or self._stop.is_set(), self.backoff_s * 2 ** (waits - 1))
                self.probe_down()
                continue
            try:
                result = send(endpoint.client)
            except InferenceServerException as error:
                self.release(endpoint, ok=False)
                attempt += 1
                time.sleep(self.failed(endpoint, error, attempt))
                continue
            except BaseException:
                self.release(endpoint, ok=False)
                raise
            self.release(endpoint, ok=True)
            return result

    async def acall(self, send: Callable[[Endpoint], Awaitable]):
        """`await send(endpoint)` on a live replica (the caller picks its own asyncio client for
        endpoint.url), with the same policy as `call`; waits and probes never block the loop."""
        attempt = waits = 0
        while True:
            endpoint = self.acquire()
            if endpoint is None:
                waits += 1
                if waits > self.retries:
                    raise TritonClientError(self.all_down_message(), "StatusCode.UNAVAILABLE")
                await asyncio.sleep(self.backoff_s * 2 ** (waits - 1))
                await asyncio.to_thread(self.probe_down)
                continue
            try:
                result = await send(endpoint)
            except InferenceServerException as error:
                self.release(endpoint, ok=False)
                attempt += 1
                await asyncio.sleep(self.failed(endpoint, error, attempt))
                continue
            except BaseException:
                self.release(endpoint, ok=False)
                raise
            self.release(endpoint, ok=True)
            return result

    # -- re-probing down replicas ---------------------------------------------------------------

    def _start_prober(self) -> None:
        if self._prober is None:
            self._prober = threading.Thread(target=self._probe_loop, name="endpoint-prober", daemon=True)
            self._prober.start()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            for endpoint in [e for e in self.endpoints if not e.up]:
                if self._stop.is_set():
                    return
                try:
                    self.probe(endpoint)
                except Exception:  # e.g. the pool closed its clients meanwhile: nothing to report
                    if self._stop.is_set():
                        return
                    raise

    def probe(self, endpoint: Endpoint) -> bool:
        """Bring `endpoint` back if it is ready and serves the same versions as the others."""
        try:
            _, versions = self._inspect(endpoint)
        except (InferenceServerException, TritonClientError):
            return False
        if self.versions is not None and versions != self.versions:
            reason = f"serves versions {versions} of '{self.model}', the others {self.versions}"
            if endpoint.reason != reason:
                self.log(f"warning: replica {endpoint.url} {reason}; not using it")
                endpoint.reason = reason
            return False
        self._set_up(endpoint)
        return True

    def summary(self) -> str:
        """'a:8001 40, b:8004 35 (2 re-sent)': successful requests per replica."""
        counts = ", ".join(f"{e.url} {e.answered}" for e in self.endpoints)
        return f"requests per replica: {counts}" + (f"; {self.resent} re-sent after a failure" if self.resent else "")

    def close(self) -> None:
        self._stop.set()
        with self._live:
            self._live.notify_all()
        if self._prober is not None:
            self._prober.join(timeout=self.probe_timeout_s * 3 + 1)
        for endpoint in self.endpoints:
            endpoint.client.close()

    def __enter__(self) -> "EndpointPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
