// The face explorer's page: every face comes from the explorer's /api routes (clients/ui.py),
// which ask the Triton server(s). Seeds stay strings: they go up to 2^63 - 1, beyond a JS number.
"use strict";

const $ = (id) => document.getElementById(id);
const walk = { frames: [], index: 0, timer: null, fps: 12 };  // fps: the explorer's, with each walk
// The newest request of each kind: an older answer arriving after a newer one is dropped, so
// what the page shows always matches its inputs.
const latest = { grid: 0, walk: 0 };

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

// GET an /api route; the explorer answers errors as {"error": one line}, shown on the page.
async function api(path, params) {
  const url = path + "?" + new URLSearchParams(params);
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error("the face explorer is not answering (is `make ui` still running?)");
  }
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status} from ${path}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function gridParams() {
  return { start: $("start").value, count: $("count").value, truncation: $("truncation").value };
}

async function showGrid() {
  const params = gridParams();
  const grid = $("grid");
  const ticket = ++latest.grid;
  grid.setAttribute("aria-busy", "true");
  try {
    const body = await api("/api/faces", params);
    if (ticket !== latest.grid) return;
    grid.replaceChildren(...body.seeds.map((seed, i) => faceFigure(seed, body.images[i])));
    $("download-grid").href = "/api/grid.png?" + new URLSearchParams(params);
    showMessage("");
  } catch (error) {
    if (ticket === latest.grid) showMessage(error.message);
  } finally {
    if (ticket === latest.grid) grid.setAttribute("aria-busy", "false");
    refreshServer();
  }
}

function faceFigure(seed, src) {
  const figure = document.createElement("figure");
  figure.className = "face";
  const image = document.createElement("img");
  image.src = src;
  image.alt = `seed ${seed}`;
  image.dataset.seed = seed;
  image.title = `seed ${seed}: click to look`;
  const caption = document.createElement("figcaption");
  caption.textContent = seed;
  figure.append(image, caption);
  figure.addEventListener("click", () => look(seed, src));
  return figure;
}

function look(seed, src) {
  $("large-image").src = src;
  $("large-image").alt = `seed ${seed}, large`;
  $("large-seed").textContent = seed;
  $("large").hidden = false;
  $("large-hint").hidden = true;
}

async function runWalk() {
  const params = { a: $("walk-a").value, b: $("walk-b").value, frames: $("walk-frames").value, truncation: $("truncation").value };
  const ticket = ++latest.walk;
  $("walk").disabled = true;
  try {
    const body = await api("/api/walk", params);
    if (ticket !== latest.walk) return;
    walk.frames = body.frames;
    walk.fps = body.fps;
    walk.index = 0;
    $("walk-position").max = String(walk.frames.length - 1);
    $("download-gif").href = "/api/walk.gif?" + new URLSearchParams(params);
    $("walk-view").hidden = false;
    $("walk-view").dataset.a = body.a;
    $("walk-view").dataset.b = body.b;
    play(true);
    showMessage("");
  } catch (error) {
    if (ticket === latest.walk) showMessage(error.message);
  } finally {
    if (ticket === latest.walk) $("walk").disabled = false;
    refreshServer();
  }
}

function showFrame(index) {
  walk.index = index;
  $("walk-image").src = walk.frames[index];
  $("walk-image").dataset.frame = String(index);
  $("walk-position").value = String(index);
  $("walk-label").textContent = `frame ${index + 1} / ${walk.frames.length}`;
}

function play(on) {
  clearInterval(walk.timer);
  walk.timer = null;
  if (on) {
    showFrame(walk.index);
    // Forth and back, so the animation never jumps from B to A.
    let step = 1;
    walk.timer = setInterval(() => {
      if (walk.index + step < 0 || walk.index + step >= walk.frames.length) step = -step;
      showFrame(walk.index + step);
    }, 1000 / walk.fps);
  }
  $("walk-play").textContent = on ? "Pause" : "Play";
}

async function refreshServer() {
  try {
    const body = await api("/api/server", {});
    const rows = body.replicas.map((r) => {
      const cells = r.up
        ? [r.url, r.requests, r.mean_batch ?? "–", r.latency_ms ?? "–", r.queue_ms ?? "–", r.compute_ms ?? "–", r.cache_hits]
        : [r.url, { text: "down: " + r.reason, span: 6 }];
      const row = document.createElement("tr");
      row.className = r.up ? "up" : "down";
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = typeof cell === "object" && cell !== null ? cell.text : String(cell);
        if (cell && cell.span) td.colSpan = cell.span;
        row.append(td);
      }
      return row;
    });
    $("server-table").tBodies[0].replaceChildren(...rows);
    const live = body.replicas.filter((r) => r.up);
    $("server-pill").textContent = `server: ${live.length} of ${body.replicas.length} up`;
    $("server-pill").className = "pill " + (live.length === body.replicas.length ? "ok" : live.length ? "warn" : "bad");
    $("server-batches").textContent = live.map((r) =>
      `${r.url} batch sizes run: ` + (Object.entries(r.batch_sizes).map(([size, n]) => `${size}×${n}`).join(", ") || "none yet")).join("; ");
  } catch (error) {
    $("server-pill").textContent = "server: unknown";
    $("server-pill").className = "pill bad";
  }
}

$("browse-form").addEventListener("submit", (event) => { event.preventDefault(); showGrid(); });
$("walk-form").addEventListener("submit", (event) => { event.preventDefault(); runWalk(); });
$("random").addEventListener("click", () => {
  $("start").value = String(Math.floor(Math.random() * 2 ** 31));
  showGrid();
});
$("truncation-slider").addEventListener("input", () => { $("truncation").value = $("truncation-slider").value; });
$("truncation-slider").addEventListener("change", showGrid);
$("truncation").addEventListener("change", () => {
  const value = Number($("truncation").value);
  if ($("truncation").value.trim() && Number.isFinite(value)) $("truncation-slider").value = String(value);
});
$("walk-from").addEventListener("click", () => { $("walk-a").value = $("large-seed").textContent; });
$("walk-to").addEventListener("click", () => { $("walk-b").value = $("large-seed").textContent; runWalk(); });
$("walk-play").addEventListener("click", () => play(walk.timer === null));
$("walk-position").addEventListener("input", () => { play(false); showFrame(Number($("walk-position").value)); });
$("server-refresh").addEventListener("click", refreshServer);

showGrid();
setInterval(refreshServer, 5000);
