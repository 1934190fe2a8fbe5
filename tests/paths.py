"""Where the shared real data lives (read from there, never copied into the project)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MINI_TAR = SHARED_DATA / "anime-faces-mini-512.tar"
SHARDS = SHARED_DATA / "anime-faces-64"
