"""What a style session keeps in memory between the edits of its clip: text encodings, condition maps and flows.

A session edits one clip with many prompts. Each edit's inversion already comes from the on-disk cache
(editing.cache); `ClipMemo` keeps the rest of what does not depend on the new prompt: the text encoder's
output for each prompt seen (the negative prompt, the inversion prompt, attention editing's source
prompt), the clip's condition maps and its optical flows (editing.keyframes.clip_flows), so the second
prompt encodes only its own text and extracts or reads no condition map and computes no flow again. A
masked edit (editing.region) keeps its own memo for the edit, so its mask, keyframes and fill share one
computation of the flows.

An edit uses a memo only inside `remembering(memo)` (a context variable, so concurrent edits in other
threads see their own or none), and every entry's key holds everything its value depends on: the
backbone's name (which names its LoRAs and options), dtype and device with the prompt; the condition
cache key (kind, clip content, frame selection, size, annotators) for condition maps; the frames' SHA-256
(editing.context.frames_key) for flows. The memo is
bounded: `max_bytes` (default 256 MB) over all entries, least recently used first out. A text encoding
of SD-1.5 is 77 x 768 values (236 KB in fp32).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .models import Backbone

DEFAULT_MEMO_BYTES = 256 * 1024**2


def _nbytes(value: Any) -> int:
    if value is None:  # an absent field of a bundle
        return 0
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value):  # a bundle of arrays (editing.flows.Flows)
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    raise TypeError(f"a memo holds tensors, arrays and dataclasses of them, not {type(value).__name__}")


class ClipMemo:
    """A bounded, least-recently-used store of one clip's prompt encodings and condition maps."""

    def __init__(self, max_bytes: int = DEFAULT_MEMO_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"a memo needs a positive size, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: tuple, value: Any) -> None:
        size = _nbytes(value)
        with self._lock:
            self._entries.pop(key, None)
            if size > self.max_bytes:
                return  # larger than the whole memo: not kept
            self._entries[key] = value
            while self.nbytes() > self.max_bytes:
                self._entries.popitem(last=False)

    def kept(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The value under `key`, made (and kept) when absent."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


_CURRENT: contextvars.ContextVar[ClipMemo | None] = contextvars.ContextVar("editing_clip_memo", default=None)


@contextlib.contextmanager
def remembering(memo: ClipMemo | None) -> Iterator[ClipMemo | None]:
    """Edits inside the block keep and reuse encodings in `memo` (None: none); the previous memo after."""
    token = _CURRENT.set(memo)
    try:
        yield memo
    finally:
        _CURRENT.reset(token)


def current_memo() -> ClipMemo | None:
    """The memo of the edit running in this context, or None."""
    return _CURRENT.get()


def text_key(backbone: Backbone, prompt: str) -> tuple:
    """What a prompt's encoding depends on: the backbone (name with its options, dtype, device) and the text."""
    return ("text", backbone.name, str(backbone.dtype), str(backbone.device), prompt)
