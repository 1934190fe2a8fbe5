"""make soak's CI version: `python -m clients.soak` for a short run against a real tritonserver,
with a SIGKILL and a restart in the middle; every answer is checked byte for byte by the script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def soak(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "clients.soak", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_short_soak_with_a_kill_in_the_middle(published_version, tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(published_version.version_dir.parent, repository / "bamsgan")
    result = soak("--model-repository", repository, "--seconds", 16, "--concurrency", 4, "--seeds", 32,
                  "--kill-at", 0.4, "--out", tmp_path / "soak")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "soak" / "report.json").read_text())
    counts = report["counts"]
    assert counts["answers"] > 0 and counts.get("wrong", 0) == 0 and counts.get("failed", 0) == 0, counts
    assert counts["images"] == counts["answers"]  # --batch 1
    [event] = report["events"]
    assert event["before"]["processes"] >= 2 and event["before"]["shm_regions"] >= 1  # server + stub, its shm
    assert event["after_cleanup"] == {"processes": 0, "shm_regions": 0} and event["cleanup_ok"]
    # The trace spans the run, both servers were seen, and memory stayed bounded (tiny model: < 1 GiB).
    trace = report["memory_trace"]
    assert len(trace) >= 8 and any(m["t"] < event["t"] for m in trace) and any(m["t"] > event["t"] for m in trace)
    assert 0 < max(m["rss_bytes"] for m in trace) < 2**30
    assert (tmp_path / "soak" / "memory.png").stat().st_size > 0
    assert "0 wrong, 0 failed" in result.stdout


def test_soak_bad_arguments(tmp_path):
    result = soak("--seconds", 0, "--out", tmp_path)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: need --seconds > 0"), result.stderr
    result = soak("--model-repository", tmp_path / "nowhere", "--seconds", 5, "--out", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], result.stderr
