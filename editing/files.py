"""Writing files atomically: a failed or interrupted write leaves nothing behind and never a half file."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

PARTIAL_PREFIX = "."  # partial files are hidden, so folder listings and cache eviction pass them by


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it into place only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{PARTIAL_PREFIX}{final.stem}.{uuid.uuid4().hex[:8]}.partial{final.suffix}")
    began = time.time()
    try:
        yield partial
        os.replace(partial, final)
        _sweep_stale_partials(final, began)
    finally:
        partial.unlink(missing_ok=True)


def _sweep_stale_partials(final: Path, began: float) -> None:
    """Delete the partial files of `final` that a killed process left (older than this write, so never a
    write still in progress beside it)."""
    for stale in final.parent.glob(f"{PARTIAL_PREFIX}{final.stem}.*.partial{final.suffix}"):
        try:
            if stale.stat().st_mtime < began:
                stale.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


def is_partial(path: Path) -> bool:
    """Whether a file is a write in progress (or one left by a crash) rather than a finished file."""
    return path.name.startswith(PARTIAL_PREFIX) and ".partial" in path.name
