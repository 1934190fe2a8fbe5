"""The face explorer (clients/ui.py, `make ui`): its routes over a real Triton server, and the page in a
real browser (Debian's chromium, headless, driven by Playwright; .ci/run installs chromium)."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from clients import ui
from clients.endpoints import EndpointPool
from clients.generate import request_faces, walk_from_pool
# The explorer in a thread and the page's steps: the very functions that take the README's picture.
from clients.ui_screenshot import ChromiumMissing, Tour, explore, find_chromium, launch_chromium, open_explorer, running_ui, screenshot
from serving.launcher import free_ports
from training.data.images import image_grid
from training.latents import MAX_SEED


def get(base: str, path: str, **params) -> tuple[int, dict | bytes, dict]:
    """(status, JSON body or bytes, headers) of GET base/path?params."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            status, body, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, body, headers = error.code, error.read(), dict(error.headers)
    if headers.get("content-type", "").startswith("application/json"):
        body = json.loads(body)
    return status, body, headers


def decode_png(data: bytes | str) -> np.ndarray:
    if isinstance(data, str):  # a data: URL
        import base64

        data = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def explorer_url(triton_server):
    with running_ui(triton_server.grpc_url) as url:
        yield url


@pytest.fixture(scope="module")
def dead_url():
    return f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there


# ---------------------------------------------------------------- the routes, over a real server


def test_faces_are_the_grpc_clients_bytes(explorer_url, triton_server):
    status, body, _ = get(explorer_url, "/api/faces", start="5", count="3", truncation="0.8")
    assert status == 200 and body["seeds"] == ["5", "6", "7"] and body["truncation"] == 0.8
    expected = request_faces(triton_server.grpc_url, [5, 6, 7], truncation=0.8)
    assert np.array_equal(np.stack([decode_png(image) for image in body["images"]]), expected)


def test_grid_png_download(explorer_url, triton_server):
    status, body, headers = get(explorer_url, "/api/grid.png", start="10", count="4", truncation="")
    assert status == 200 and headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'attachment; filename="faces-10-13.png"'
    assert np.array_equal(decode_png(body), image_grid(request_faces(triton_server.grpc_url, [10, 11, 12, 13])))


def test_walk_frames_and_gif(explorer_url, triton_server):
    status, body, _ = get(explorer_url, "/api/walk", a="3", b="17", frames="5", truncation="0.7")
    assert status == 200 and (body["a"], body["b"]) == ("3", "17")
    with EndpointPool(triton_server.grpc_url) as pool:
        expected = walk_from_pool(pool, 3, 17, 5, 0.7)
    assert np.array_equal(np.stack([decode_png(frame) for frame in body["frames"]]), expected)
    status, gif, headers = get(explorer_url, "/api/walk.gif", a="3", b="17", frames="5", truncation="0.7")
    assert status == 200 and headers["content-type"] == "image/gif"
    assert headers["content-disposition"] == 'attachment; filename="walk-3-17-5-t0.7.gif"'
    assert Image.open(io.BytesIO(gif)).n_frames == 5


def test_server_panel_shows_triton_statistics(explorer_url, triton_server):
    get(explorer_url, "/api/faces", start="0", count="8")
    status, body, _ = get(explorer_url, "/api/server")
    assert status == 200 and body["model"] == "bamsgan"
    (replica,) = body["replicas"]
    assert replica["url"] == triton_server.grpc_url and replica["up"] and replica["versions"] == ["1"]
    assert replica["requests"] > 0 and replica["executions"] > 0 and replica["mean_batch"] >= 1
    assert replica["latency_ms"] > 0 and replica["compute_ms"] > 0 and replica["queue_ms"] >= 0
    assert replica["batch_sizes"] and all(int(size) >= 1 for size in replica["batch_sizes"])


BAD_INPUT = {
    # name: (route, params, words the one-line message must contain)
    "seed-not-a-number": ("/api/faces", {"start": "abc", "count": "4"}, "start seed must be a whole number from 0 to"),
    "seed-negative": ("/api/faces", {"start": "-1", "count": "4"}, "got '-1'"),
    "seed-superscript-digit": ("/api/faces", {"start": "\u00b2", "count": "4"}, "start seed must be a whole number from 0 to"),
    "truncation-inf": ("/api/faces", {"start": "0", "count": "2", "truncation": "inf"}, "truncation must be a finite number above 0"),
    "seed-over-int64": ("/api/faces", {"start": str(MAX_SEED + 1), "count": "1"}, f"from 0 to {MAX_SEED}"),
    "seed-empty": ("/api/faces", {"start": "", "count": "4"}, "start seed must be a whole number"),
    "grid-past-the-last-seed": ("/api/faces", {"start": str(MAX_SEED), "count": "2"}, "runs past the largest seed"),
    "too-many-faces": ("/api/faces", {"start": "0", "count": str(ui.MAX_FACES + 1)}, f"from 1 to {ui.MAX_FACES}, got '{ui.MAX_FACES + 1}'"),
    "no-faces": ("/api/faces", {"start": "0", "count": "0"}, "the number of faces must be"),
    "faces-not-a-number": ("/api/grid.png", {"start": "0", "count": "1e3"}, "the number of faces must be"),
    "truncation-zero": ("/api/faces", {"start": "0", "count": "2", "truncation": "0"}, "truncation must be positive, got 0.0"),
    "truncation-negative": ("/api/faces", {"start": "0", "count": "2", "truncation": "-0.5"}, "truncation must be positive"),
    "truncation-nan": ("/api/faces", {"start": "0", "count": "2", "truncation": "nan"}, "truncation must not be NaN"),
    "truncation-text": ("/api/faces", {"start": "0", "count": "2", "truncation": "lots"}, "truncation must be a number above 0"),
    "walk-seed-a": ("/api/walk", {"a": "x", "b": "3", "frames": "4"}, "seed A must be a whole number"),
    "walk-seed-b": ("/api/walk.gif", {"a": "1", "b": "3.5", "frames": "4"}, "seed B must be a whole number"),
    "walk-one-frame": ("/api/walk", {"a": "1", "b": "3", "frames": "1"}, f"frames must be a whole number from 2 to {ui.MAX_FRAMES}"),
    "walk-too-many-frames": ("/api/walk", {"a": "1", "b": "3", "frames": "1000"}, "got '1000'"),
    "walk-truncation-nan": ("/api/walk", {"a": "1", "b": "3", "frames": "4", "truncation": "NaN"}, "truncation must not be NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_line_and_the_page_stays_up(explorer_url, case):
    route, params, words = BAD_INPUT[case]
    status, body, _ = get(explorer_url, route, **params)
    assert status == 400 and set(body) == {"error"}
    assert words in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert get(explorer_url, "/api/faces", start="1", count="1")[0] == 200


def test_server_down_is_a_clear_message_and_the_page_stays_up(dead_url):
    with running_ui(dead_url) as url:
        status, body, _ = get(url, "/api/faces", start="0", count="4")
        assert status == 503 and f"cannot reach Triton at {dead_url}" in body["error"] and "make serve" in body["error"]
        status, body, _ = get(url, "/api/server")
        assert status == 200 and body["replicas"][0]["up"] is False and dead_url in body["replicas"][0]["reason"]
        status, page, _ = get(url, "/")
        assert status == 200 and b"BaMSGAN face explorer" in page


def test_one_of_two_replicas_down_the_other_answers(triton_server, dead_url):
    with running_ui(f"{dead_url},{triton_server.grpc_url}") as url:
        status, body, _ = get(url, "/api/faces", start="20", count="4")
        assert status == 200
        assert np.array_equal(np.stack([decode_png(i) for i in body["images"]]), request_faces(triton_server.grpc_url, range(20, 24)))
        replicas = {r["url"]: r for r in get(url, "/api/server")[1]["replicas"]}
        assert replicas[dead_url]["up"] is False and replicas[triton_server.grpc_url]["up"] is True


def test_a_replica_that_dies_while_the_page_is_up(triton_server, tmp_path):
    """Two replicas of the same version; one stops mid-session: the page's next faces come from the
    other, byte for byte, and the server panel shows which is down."""
    from serving.launcher import TritonServer

    second = TritonServer(triton_server.repository, *free_ports(3), log_path=tmp_path / "second.log", cache_mib=0, poll_seconds=0)
    second.start(timeout=120)
    try:
        with running_ui(f"{second.grpc_url},{triton_server.grpc_url}") as url:
            assert get(url, "/api/faces", start="0", count="8")[0] == 200
            second.stop()
            status, body, _ = get(url, "/api/faces", start="30", count="8", truncation="0.9")
            assert status == 200
            expected = request_faces(triton_server.grpc_url, range(30, 38), truncation=0.9)
            assert np.array_equal(np.stack([decode_png(i) for i in body["images"]]), expected)
            replicas = {r["url"]: r for r in get(url, "/api/server")[1]["replicas"]}
            assert replicas[second.grpc_url]["up"] is False and replicas[triton_server.grpc_url]["up"] is True
    finally:
        second.stop()


def test_cli_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        ui.main(["--url", "http://localhost:8001"])
    assert exited.value.code == 2 and "is not gRPC" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exited:
            ui.main(["--port", str(taken.getsockname()[1])])
    assert exited.value.code == 2 and "choose another port (UI_PORT=...)" in capsys.readouterr().err


# ---------------------------------------------------------------- the page in a real browser


def chromium_or_skip() -> str:
    """Debian's chromium. CI installs it (.ci/run), so there a missing one fails; a developer without it skips."""
    try:
        return find_chromium()
    except ChromiumMissing as missing:
        message = f"{missing} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def page(explorer_url, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, tmp_path / "chromium-profile", executable)
        try:
            yield open_explorer(browser, explorer_url)  # the first grid (shown on load) is in before the form changes
        finally:
            browser.close()


PIXELS_JS = """selector => {
  const image = document.querySelector(selector);
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def pixels(page, selector: str) -> np.ndarray:
    """The RGB pixels the browser decoded for an <img>, read back through a canvas."""
    page.wait_for_function("s => document.querySelector(s).complete && document.querySelector(s).naturalWidth > 0", arg=selector)
    rgba = np.array(page.evaluate(PIXELS_JS, selector), dtype=np.uint8).reshape(64, 64, 4)
    assert (rgba[..., 3] == 255).all()
    return rgba[..., :3]


# The test's tour of the page; clients.ui_screenshot.PICTURE_TOUR is the README picture's.
# Walk A None: the "Walk from here" button sets it from the large face.
TEST_TOUR = Tour(start="40", count="6", truncation="0.75", look="42", walk_a=None, walk_b="7", frames="5", frame=0)


def test_the_page_in_chromium(page, triton_server, tmp_path):
    from playwright.sync_api import expect

    # The tour, as clients.ui_screenshot drives it for the README's picture; each step waits until the
    # page shows its result: a grid of seeds 40-45 at truncation 0.75; face 42 large (clicked);
    # a walk from 42 ("Walk from here") to 7 in 5 frames that plays (reaches frame 3), then paused on
    # its first frame; the server panel refreshed with the replica up.
    explore(page, TEST_TOUR)

    # Browse: the grid from the start seed, with truncation; the face's pixels are the gRPC client's bytes.
    expect(page.locator("#grid img")).to_have_count(6)
    face = request_faces(triton_server.grpc_url, [42], truncation=0.75)[0]
    assert np.array_equal(pixels(page, "#grid img[data-seed='42']"), face)
    assert "/api/grid.png?start=40&count=6&truncation=0.75" in page.get_attribute("#download-grid", "href")

    # Look: a click showed the face large, with its seed.
    expect(page.locator("#large-seed")).to_have_text("42")
    assert np.array_equal(pixels(page, "#large-image"), face)

    # Walk: from 42 (set from the large face) to 7; it played, starts on face 42 and is downloadable.
    expect(page.locator("#walk-a")).to_have_value("42")
    expect(page.locator("#walk-view")).to_be_visible()
    assert "/api/walk.gif?a=42&b=7&frames=5&truncation=0.75" in page.get_attribute("#download-gif", "href")
    expect(page.locator("#walk-label")).to_have_text("frame 1 / 5")
    assert np.array_equal(pixels(page, "#walk-image"), face)

    # Server: the panel shows the replica up, with figures.
    expect(page.locator("#server-pill")).to_have_text("server: 1 of 1 up")
    expect(page.locator("#server-table tbody tr.up td").first).to_have_text(triton_server.grpc_url)
    screenshot(page, tmp_path / "face-explorer.png")
    if os.environ.get("UI_SCREENSHOT"):
        screenshot(page, os.environ["UI_SCREENSHOT"])
    assert (tmp_path / "face-explorer.png").stat().st_size > 10_000

    # Bad input: a clear message on the page; the faces stay; a good request clears it.
    for field, value, words in (("#start", "abc", "start seed must be a whole number"),
                                ("#truncation", "nan", "truncation must not be NaN"),
                                ("#count", "500", "the number of faces must be a whole number from 1 to 64")):
        page.fill(field, value)
        page.click("#show")
        expect(page.locator("#message")).to_contain_text(words)
        expect(page.locator("#grid img")).to_have_count(6)
        page.fill(field, {"#start": "40", "#truncation": "0.75", "#count": "6"}[field])
    page.click("#show")
    expect(page.locator("#message")).to_be_hidden()
    page.fill("#walk-a", "-3")
    page.click("#walk")
    expect(page.locator("#message")).to_contain_text("seed A must be a whole number")
