"""The README's picture of the face explorer, by the browser test's own path (`make ui-screenshot`).

    python -m clients.ui_screenshot --out clients/results/face-explorer.png

Publishes the released generator (export/released/) into a temporary model repository as `make serve`
does (export.release.publish_if_empty), starts Triton through serving/launcher.py on the ports `make serve`
uses (so the page shows the URL a user sees), starts the face explorer in this process, drives the
page in Debian's chromium (headless, through Playwright) and writes the screenshot to --out; then
stops everything and removes the temporary repository, also on error or Ctrl-C.

tests/test_ui.py drives the page with the same functions (`launch_chromium`, `open_explorer`,
`explore`, `screenshot`) over its tiny random model, so the test exercises the path that makes the
picture; only the tour (`PICTURE_TOUR` here, the test's own there) differs.

Errors are one line: chromium missing ("apt-get install chromium"), a port in use, no release.
Exit codes: 0 written; 1 the server or the page failed; 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bamsgan"
DEFAULT_OUT = REPO_ROOT / "clients" / "results" / "face-explorer.png"

# Chromium in a container as root, with nothing outside reachable: no sandbox, no GPU, no calls home.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
PAGE_TIMEOUT_MS = 30_000


class ChromiumMissing(RuntimeError):
    """No system chromium (Playwright must never download its own)."""


# ---------------------------------------------------------------------------------------------
# The browser


def find_chromium() -> str:
    """Debian's chromium, or ChromiumMissing with the one line that says how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise ChromiumMissing("chromium is not installed: apt-get install chromium")
    return path


def launch_chromium(playwright, profile_dir: str | Path, executable_path: str | None = None):
    """The system chromium, headless, in a fresh profile: a Playwright BrowserContext (close() it)."""
    return playwright.chromium.launch_persistent_context(
        Path(profile_dir), executable_path=executable_path or find_chromium(), headless=True, args=CHROMIUM_FLAGS,
        viewport=VIEWPORT,
    )


# ---------------------------------------------------------------------------------------------
# The face explorer in this process


@contextmanager
def running_ui(urls, port: int | None = None, timeout: float = 20.0, retries: int = 1):
    """The explorer's web app on 127.0.0.1:port (default: a free one), served by uvicorn in a thread,
    as `make ui` runs it; yields its base URL."""
    import uvicorn

    from clients import ui
    from serving.launcher import free_ports

    explorer = ui.Explorer(urls, timeout=timeout, retries=retries)
    port = port or free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(ui.create_app(explorer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ui", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the face explorer did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        explorer.close()


# ---------------------------------------------------------------------------------------------
# The page, step by step (what a person does; every step waits until the page shows its result)


@dataclass(frozen=True)
class Tour:
    """What to do on the page: a grid, one face large, a walk paused on one frame."""

    start: str  # the grid's first seed
    count: str  # faces in the grid
    truncation: str  # also the walk's
    look: str  # the seed clicked to see it large
    walk_a: str | None  # None: "Walk from here" (the large face's seed)
    walk_b: str
    frames: str
    frame: int  # the walk frame (0-based) shown when paused


# The README's caption: "a grid at truncation 0.8, seed 2 large, a walk from 3 to 17, the server's figures".
PICTURE_TOUR = Tour(start="0", count="21", truncation="0.8", look="2", walk_a="3", walk_b="17", frames="24", frame=11)


def open_explorer(context, url: str):
    """A new tab on the explorer, once the grid it shows on load is in."""
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#grid[aria-busy='false'] img")
    return page


def show_grid(page, start: str, count: str, truncation: str) -> None:
    from playwright.sync_api import expect

    page.fill("#start", start)
    page.fill("#count", count)
    page.fill("#truncation", truncation)
    page.click("#show")
    page.wait_for_selector(f"#grid img[data-seed='{int(start) + int(count) - 1}']")
    expect(page.locator("#grid img")).to_have_count(int(count))
    expect(page.locator("#grid")).to_have_attribute("aria-busy", "false")


def look_at(page, seed: str) -> None:
    """Click a face of the grid: it shows large, with its seed."""
    from playwright.sync_api import expect

    page.click(f"#grid img[data-seed='{seed}']")
    expect(page.locator("#large-seed")).to_have_text(seed)


def run_walk(page, seed_a: str | None, seed_b: str, frames: str) -> None:
    """A walk from seed A (None: from the large face) to seed B; returns once it plays."""
    from playwright.sync_api import expect

    if seed_a is None:
        page.click("#walk-from")
    else:
        page.fill("#walk-a", seed_a)
    page.fill("#walk-b", seed_b)
    page.fill("#walk-frames", frames)
    page.click("#walk")
    expect(page.locator("#walk-view")).to_be_visible()
    expect(page.locator("#walk-view")).to_have_attribute("data-b", seed_b)
    frame = str(min(3, int(frames) - 1))
    page.wait_for_function(f"() => document.querySelector('#walk-image').dataset.frame === '{frame}'")  # the animation advances


def pause_walk(page, frame: int, frames: str) -> None:
    """Pause the walk and go to one frame (0-based), so a picture shows the same frame every time."""
    from playwright.sync_api import expect

    page.click("#walk-play")  # pause
    page.locator("#walk-position").fill(str(frame))
    expect(page.locator("#walk-label")).to_have_text(f"frame {frame + 1} / {frames}")


def show_server(page, replicas: int = 1) -> None:
    """Refresh the server panel; returns once it shows every replica up."""
    from playwright.sync_api import expect

    page.click("#server-refresh")
    expect(page.locator("#server-pill")).to_have_text(f"server: {replicas} of {replicas} up")
    expect(page.locator("#server-table tbody tr.up")).to_have_count(replicas)


def explore(page, tour: Tour, replicas: int = 1) -> None:
    """The whole tour, in the order the picture shows it: grid, a face large, a walk, the server's figures."""
    show_grid(page, tour.start, tour.count, tour.truncation)
    look_at(page, tour.look)
    run_walk(page, tour.walk_a, tour.walk_b, tour.frames)
    pause_walk(page, tour.frame, tour.frames)
    show_server(page, replicas)


def screenshot(page, path: str | Path) -> Path:
    """The page as it stands (the viewport, cut below the page's content), written atomically as PNG."""
    import numpy as np
    from PIL import Image

    from training.data.images import save_png

    page.mouse.move(0, 0)  # no hover highlight on the last button clicked
    height = page.evaluate("() => Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)") + 16
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": min(height, VIEWPORT["height"])}
    picture = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"))
    return save_png(path, picture)


# ---------------------------------------------------------------------------------------------
# The command


def take_picture(out: Path, release_dir: Path, ports: dict[str, int], log=print) -> Path:
    """Release -> temporary repository -> Triton -> explorer -> chromium -> out. Everything started
    here is stopped, and the temporary folder removed, however this ends."""
    from playwright.sync_api import sync_playwright

    from export.release import publish_if_empty
    from serving.launcher import TritonServer

    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="bamsgan-ui-screenshot-") as scratch:
        scratch = Path(scratch)
        repository = scratch / "model_repository"
        (repository / MODEL_NAME).mkdir(parents=True)
        shutil.copy(REPO_ROOT / "model_repository" / MODEL_NAME / "config.pbtxt", repository / MODEL_NAME / "config.pbtxt")
        log(publish_if_empty(release_dir, repository, MODEL_NAME))  # `make serve`'s first step
        # The server as `make serve` runs it (response cache on), on its ports.
        server = TritonServer(repository, ports["grpc"], ports["http"], ports["metrics"], log_path=scratch / "tritonserver.log")
        with server:
            log(f"tritonserver ready on {server.grpc_url} in {server.startup_seconds:.0f} s")
            url = f"localhost:{ports['grpc']}"  # as `make ui` names it: the page shows this URL
            with running_ui(url, ports["ui"]) as explorer_url, sync_playwright() as playwright:
                browser = launch_chromium(playwright, scratch / "chromium-profile", chromium)
                try:
                    page = open_explorer(browser, explorer_url)
                    explore(page, PICTURE_TOUR)
                    written = screenshot(page, out)
                finally:
                    browser.close()
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from export.release import RELEASED_DIR
    from serving.launcher import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

    from clients.ui import DEFAULT_PORT

    parser = argparse.ArgumentParser(prog="python -m clients.ui_screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG to write (default clients/results/face-explorer.png)")
    parser.add_argument("--release", type=Path, default=RELEASED_DIR, help="the release folder to publish (default export/released)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="Triton's gRPC port, shown on the page (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="Triton's HTTP port (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Triton's metrics port (default %(default)s)")
    parser.add_argument("--ui-port", type=int, default=DEFAULT_PORT, help="the face explorer's port (default %(default)s)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must be a .png file, got {args.out}")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; name the PNG file")
    return args


def main(argv: list[str] | None = None) -> int:
    from export.release import WEIGHTS_NAME
    from serving.launcher import LaunchError, check_port_free

    args = parse_args(argv)
    ports = {"grpc": args.grpc_port, "http": args.http_port, "metrics": args.metrics_port, "ui": args.ui_port}
    try:
        find_chromium()
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"the gRPC, HTTP, metrics and UI ports must differ, got {ports}")
        for what, port in (("gRPC", args.grpc_port), ("HTTP", args.http_port), ("metrics", args.metrics_port), ("UI", args.ui_port)):
            if not 1 <= port <= 65535:
                raise ValueError(f"the {what} port must be 1-65535, got {port}")
            check_port_free("127.0.0.1", port, what)  # before minutes of export: "choose another with --grpc-port"
        if not (args.release / WEIGHTS_NAME).is_file():
            raise ValueError(f"no released generator at {args.release / WEIGHTS_NAME}")
    except (ChromiumMissing, LaunchError, ValueError) as error:
        print(f"ui_screenshot: error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        written = take_picture(args.out, args.release, ports)
    except LaunchError as error:  # one line, then the server log's tail
        print(f"ui_screenshot: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ui_screenshot: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except Exception as error:  # the export, the explorer or the page: one line, nothing written
        lines = str(error).strip().splitlines() or [""]  # Playwright's: what failed, ..., what it waited for
        detail = lines[0] + (f" ({lines[-1].strip(' -')})" if len(lines) > 1 else "")
        print(f"ui_screenshot: error: {type(error).__name__}: {detail}", file=sys.stderr)
        return 1
    print(f"wrote {written} in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
