"""ToMe for SD (Bolya and Hoffman, 2023): merge redundant tokens inside each frame's self-attention.

At the finest resolution that has attention, each self-attention layer sees a `ratio` share fewer tokens:
the tokens of a frame are split into destinations (one per 2x2 cell, at a seeded position, the same for
every frame and call) and sources (the rest); the sources most similar to a destination (cosine
similarity of the layer's input) are averaged into it (bipartite soft matching). The layer's processor,
whatever it is (cross-frame, feature bank, anchors), runs on the merged tokens, and its output is
unmerged: each merged source takes its destination's output. Every frame merges the same number of
tokens, so cross-frame attention gathers merged frames as it gathers whole ones. Ratio 0 leaves the
processors as they are.

Installed by wrapping each chosen layer's processor (diffusers' `set_attn_processor`), restored in
`finally`; the wrapper keeps the wrapped processor's call signature, so diffusers hands it the same
per-call state (`cross_attention_kwargs`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from . import StepCache

CELL = 2  # destinations: one token per CELL x CELL cell (ToMe for SD's stride)
SEED = 0  # the destinations' positions in their cells


def merge_plan(metric: torch.Tensor, height: int, width: int, ratio: float) -> tuple[Callable, Callable]:
    """(merge, unmerge) for tokens (batch, height x width, channels) whose similarity is read from `metric`.

    merge: (batch, N, C) -> (batch, N - r, C); unmerge: (batch, N - r, C) -> (batch, N, C), r = ratio x N
    (at most the number of sources)."""
    batch, tokens, _ = metric.shape
    sources, destinations = split_positions(height, width, metric.device)
    count = min(len(sources), int(ratio * tokens))
    if count == 0:
        return (lambda x: x), (lambda x: x)
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = unit[:, sources] @ unit[:, destinations].transpose(1, 2)  # (batch, sources, destinations)
    best, target = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :count], order[:, count:]  # source indices (into `sources`)
    into = target.gather(1, merged)  # (batch, count): each merged source's destination index

    def pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, sources], x[:, destinations]
        dst = dst.scatter_reduce(
            1, into[..., None].expand(-1, -1, x.shape[-1]), pick(src, merged), reduce="mean", include_self=True
        )
        return torch.cat([pick(src, kept), dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unmerged, dst = x[:, : kept.shape[1]], x[:, kept.shape[1] :]
        out = x.new_zeros(x.shape[0], tokens, x.shape[-1])
        out[:, destinations] = dst
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        out[rows, sources[kept]] = unmerged
        out[rows, sources[merged]] = pick(dst, into)
        return out

    return merge, unmerge


@functools.lru_cache(maxsize=32)
def _split(height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    generator = torch.Generator("cpu").manual_seed(SEED)
    rows, cols = height // CELL, width // CELL
    chosen = torch.randint(CELL * CELL, (rows, cols), generator=generator)
    is_destination = torch.zeros(height, width, dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            k = int(chosen[r, c])
            is_destination[r * CELL + k // CELL, c * CELL + k % CELL] = True
    flat = is_destination.flatten()
    return tuple(torch.nonzero(~flat).flatten().tolist()), tuple(torch.nonzero(flat).flatten().tolist())


def split_positions(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions of the sources and the destinations (one per full CELL x CELL cell)."""
    sources, destinations = _split(height, width)
    return torch.tensor(sources, device=device), torch.tensor(destinations, device=device)


def level(name: str, up_blocks: int) -> int | None:
    """How many times a layer's resolution was halved, from its name (None outside the blocks)."""
    found = re.match(r"(down_blocks|up_blocks)\.(\d+)\.|mid_block\.", name)
    if found is None:
        return None
    if found.group(1) == "down_blocks":
        return int(found.group(2))
    if found.group(1) == "up_blocks":
        return up_blocks - 1 - int(found.group(2))
    return up_blocks - 1


def finest_self_attention(names: Iterable[str], up_blocks: int) -> list[str]:
    """The spatial self-attention layers (attn1, not motion modules) at the finest level that has any."""
    spatial = [n for n in names if ".attn1." in n and "motion_modules" not in n and level(n, up_blocks) is not None]
    if not spatial:
        return []
    finest = min(level(n, up_blocks) for n in spatial)
    return [n for n in spatial if level(n, up_blocks) == finest]


class TokenMerge(StepCache):
    """Self-attention at the finest attention level on `ratio` fewer tokens per frame."""

    def __init__(self, ratio: float):
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.latent_size: tuple[int, int] | None = None
        self.merged_calls = 0

    @contextlib.contextmanager
    def installed(self, unet: torch.nn.Module) -> Iterator[None]:
        if self.ratio == 0:
            yield
            return
        original = dict(unet.attn_processors)
        chosen = finest_self_attention(original, len(unet.up_blocks))

        def remember(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs["sample"]
            self.latent_size = tuple(int(s) for s in sample.shape[-2:])

        hook = unet.register_forward_pre_hook(remember, with_kwargs=True)
        try:
            unet.set_attn_processor({n: wrap(p, self) if n in chosen else p for n, p in original.items()})
            yield
        finally:
            hook.remove()
            unet.set_attn_processor(original)

    def grid(self, tokens: int) -> tuple[int, int] | None:
        """(height, width) of a layer's `tokens` on the latent grid last seen, or None when they do not fit one."""
        if self.latent_size is None:
            return None
        height, width = self.latent_size
        factor = round(math.sqrt(height * width / tokens))
        if factor < 1:
            return None
        h, w = -(-height // factor), -(-width // factor)
        return (h, w) if h * w == tokens else None


class TokenMergedProcessor:
    """A processor wrapper: the wrapped processor's self-attention on merged tokens, its output unmerged."""

    def __init__(self, inner: Any, owner: TokenMerge):
        self.inner, self.owner = inner, owner

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        grid = self.owner.grid(hidden_states.shape[1]) if hidden_states.ndim == 3 else None
        if encoder_hidden_states is not None or attention_mask is not None or grid is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        merge, unmerge = merge_plan(hidden_states, grid[0], grid[1], self.owner.ratio)
        self.owner.merged_calls += 1
        return unmerge(self.inner(attn, merge(hidden_states), None, None, temb, *args, **kwargs))

    def __getattr__(self, name: str):  # the wrapped processor's attributes (IP-Adapter weights, flags)
        if name in ("inner", "owner"):
            raise AttributeError(name)
        return getattr(self.inner, name)


@functools.cache
def _wrapper_class(inner_class: type) -> type:
    """A TokenMergedProcessor subclass whose __call__ has `inner_class.__call__`'s signature: diffusers hands
    a processor only the cross_attention_kwargs its signature names."""

    def __call__(self, *args: Any, **kwargs: Any):
        return TokenMergedProcessor.__call__(self, *args, **kwargs)

    __call__.__signature__ = inspect.signature(inner_class.__call__)
    return type(f"TokenMerged{inner_class.__name__}", (TokenMergedProcessor,), {"__call__": __call__})


def wrap(processor: Any, owner: TokenMerge):
    return _wrapper_class(type(processor))(processor, owner)


def make_tome(value: float) -> TokenMerge:
    return TokenMerge(value)
