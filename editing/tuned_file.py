"""What a one-shot tuned weights file (`editing.tuning`) says about itself, read without loading any model.

Kept apart from `editing.tuning` so that building a request (`editing.requests`, which resolves the
attention mode of `--tuned FILE`) needs no training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

from .errors import TuningError

FORMAT = "editing-tuned/1"
TUNING_ATTENTION = "sparse-causal"
JSON_FIELDS = ("settings", "source", "losses")  # metadata values stored as JSON text


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a tuned-weights file, JSON values decoded; TuningError when it is not one."""
    name = Path(path).name
    if not Path(path).is_file():
        raise TuningError(f"tuned weights {path} do not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise TuningError(f"{name} is not a readable .safetensors file: {' '.join(str(exc).split())[:120]}") from exc
    if raw.get("format") != FORMAT:
        raise TuningError(f"{name} holds no tuned weights of this program (format {raw.get('format')!r}, expected {FORMAT!r})")
    try:
        return {k: json.loads(v) if k in JSON_FIELDS else v for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise TuningError(f"{name} has damaged metadata: {exc}") from exc


def tuned_attention(path: str | os.PathLike) -> str:
    """The cross-frame attention mode a tuned file was tuned with (and is best edited with)."""
    return read_metadata(path).get("settings", {}).get("attention", TUNING_ATTENTION)
