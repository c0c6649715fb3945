"""DDIM inversion of the source frames, and an on-disk cache of inverted latent trajectories.

DDIM inversion runs the deterministic DDIM update backwards (Song et al., 2021, eq. 12 solved for
x_{t+1}): starting from the clean latents, each step predicts the noise and moves to the next, noisier
timestep. Sampling from the last latent with the inversion prompt retraces the path back to the source,
which is what makes edits keep the source's layout. It runs through the same loop as sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .models import Backbone
from .sampling import FramePlan, Guidance, StepCallback, TextConditioning, denoise

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class Trajectory:
    """Latents along the inversion path: states[0] is the clean source, states[-1] the start of sampling."""

    timesteps: torch.Tensor  # (k,) ascending inverse timesteps
    states: torch.Tensor  # (k + 1, frames, channels, h, w)

    @property
    def final(self) -> torch.Tensor:
        return self.states[-1]

    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


def ddim_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    steps: int,
    strength: float,
    text: TextConditioning,
    plan: FramePlan,
    callback: StepCallback | None = None,
    control=None,
) -> Trajectory:
    """Invert clean latents along the DDIM path under `text` (no guidance), recording every state."""
    inverse = backbone.inverse_scheduler()
    inverse.set_timesteps(steps)
    timesteps = inverse.timesteps[: max(1, round(steps * strength))]
    states = [latents.detach().to("cpu", copy=True)]

    def record(index: int, timestep: int, current: torch.Tensor) -> None:
        states.append(current.detach().to("cpu", copy=True))
        if callback is not None:
            callback(index, timestep, current)

    denoise(backbone, inverse, latents, timesteps, Guidance(TextConditioning(text.positive, None), 1.0), plan, record, control)
    return Trajectory(timesteps.cpu(), torch.stack(states))


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


def default_cache_dir() -> Path:
    """$EDITING_CACHE_DIR, else the user's cache folder."""
    if os.environ.get("EDITING_CACHE_DIR"):
        return Path(os.environ["EDITING_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "video-text-editing"


def cache_key(**parts) -> str:
    """A stable key for anything the cache holds: SHA-256 of the parts as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class TensorCache:
    """Tensors on disk keyed by content, capped in bytes, evicting the least recently used files."""

    def __init__(self, directory: str | os.PathLike, kind: str, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory = Path(directory) / kind
        self.max_bytes = max_bytes

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged entry is dropped, never fatal
            log.warning("dropping unreadable cache entry %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        _touch(path)  # mark as recently used
        return data

    def save(self, key: str, data: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{key}.{uuid.uuid4().hex[:8]}.partial"
        try:
            torch.save(data, partial)
            os.replace(partial, self._path(key))
            _touch(self._path(key))
        finally:
            partial.unlink(missing_ok=True)
        self.evict()

    def evict(self) -> None:
        """Delete the least recently used entries until the total size is within the cap."""
        evict_least_recent(sorted(self.directory.glob("*.pt")), self.max_bytes)


def evict_least_recent(paths: list[Path], max_bytes: int, keep_newest: bool = False, companions: tuple[str, ...] = ()) -> None:
    """Delete the least recently used files (and their companion files by suffix) until their total is within `max_bytes`."""
    entries = sorted(paths, key=lambda p: p.stat().st_mtime_ns)
    total = sum(p.stat().st_size for p in entries)
    for path in entries[:-1] if keep_newest else entries:
        if total <= max_bytes:
            break
        total -= path.stat().st_size
        log.info("evicting cached %s", path.name)
        path.unlink(missing_ok=True)
        for suffix in companions:
            path.with_suffix(suffix).unlink(missing_ok=True)


def _touch(path: Path) -> None:
    """Set a file's times to now with full precision (the file system's own clock is coarse)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def load_trajectory(cache: TensorCache, key: str) -> Trajectory | None:
    data = cache.load(key)
    return None if data is None else Trajectory(data["timesteps"], data["states"])


def save_trajectory(cache: TensorCache, key: str, trajectory: Trajectory) -> None:
    cache.save(key, {"timesteps": trajectory.timesteps, "states": trajectory.states})
