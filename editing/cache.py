"""The on-disk cache: content-addressed keys, atomic writes, a size cap that evicts the least recently used.

Everything the editor computes once per clip and reuses (DDIM inversions, null-text embeddings,
condition maps, one-shot tunings) is stored under a key that hashes what it depends on: the clip's bytes
(`content_hash`) and the settings (`cache_key`). A key never changes meaning, so an entry is either
valid or absent; entries are written atomically and the least recently used go first when a kind's
folder grows past its cap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path

import torch

from .files import atomic_output, is_partial

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 * 1024**3


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time)."""
    stat = os.stat(path)
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def cache_key(**parts) -> str:
    """A stable key for anything the cache holds: SHA-256 of the parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """$EDITING_CACHE_DIR, else the user's cache folder."""
    if os.environ.get("EDITING_CACHE_DIR"):
        return Path(os.environ["EDITING_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "video-text-editing"


def touch(path: Path) -> None:
    """Mark a file as just used: its times set to now with full precision (the file system's own clock is coarse)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def evict_least_recent(paths: list[Path], max_bytes: int, keep_newest: bool = False, companions: tuple[str, ...] = ()) -> None:
    """Delete the least recently used files (and their companion files by suffix) until their total is within `max_bytes`.

    Partial files (writes in progress) are neither counted nor deleted.
    """
    entries = sorted((p for p in paths if not is_partial(p)), key=lambda p: p.stat().st_mtime_ns)
    total = sum(p.stat().st_size for p in entries)
    for path in entries[:-1] if keep_newest else entries:
        if total <= max_bytes:
            break
        total -= path.stat().st_size
        log.info("evicting cached %s", path.name)
        path.unlink(missing_ok=True)
        for suffix in companions:
            path.with_suffix(suffix).unlink(missing_ok=True)


class TensorCache:
    """Tensors on disk keyed by content, capped in bytes, evicting the least recently used files."""

    def __init__(self, directory: str | os.PathLike, kind: str, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory = Path(directory) / kind
        self.max_bytes = max_bytes

    def path(self, key: str) -> Path:
        """Where the entry for `key` lives."""
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        """The entry for `key` (marked as recently used), or None when there is none or it cannot be read."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged entry is dropped, never fatal
            log.warning("dropping unreadable cache entry %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        touch(path)
        return data

    def save(self, key: str, data: dict) -> None:
        """Write the entry for `key` atomically, then evict beyond the cap."""
        with atomic_output(self.path(key)) as partial:
            torch.save(data, partial)
        touch(self.path(key))
        self.evict()

    def evict(self) -> None:
        """Delete the least recently used entries until the total size is within the cap."""
        evict_least_recent(sorted(self.directory.glob("*.pt")), self.max_bytes)
