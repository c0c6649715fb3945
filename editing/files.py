"""Writing files atomically: a failed or interrupted write leaves nothing behind and never a half file."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

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


def check_writable(path: str | os.PathLike, name: str = "output (--out)") -> None:
    """Raise a ConfigError naming `name` unless a file can be made at `path`: it is not a folder, and the
    nearest existing folder on its way really takes a new file (probed with a file removed at once, so a
    read-only disk or a folder without write permission is found before any work, whoever runs it)."""
    final = Path(path)
    if final.is_dir():
        raise ConfigError(f"{name} {final} is a folder; name a file in it")
    folder = final.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{name} {final} cannot be written: {folder} is a file, not a folder")
    try:
        probe = folder / f"{PARTIAL_PREFIX}write-check.{uuid.uuid4().hex[:8]}.partial"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{name} {final} cannot be written: {str(exc.strerror or exc).lower()} in {folder}") from None
