"""`gpu(fn)`: Hugging Face's ZeroGPU decorator when the `spaces` package is installed, else `fn` itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def gpu(fn: F) -> F:
    """Ask a Space for a GPU while `fn` runs; a no-op anywhere `spaces` is not installed."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def on_spaces() -> bool:
    """Whether handlers run through `spaces.GPU` (in another process, on a Space)."""
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True
