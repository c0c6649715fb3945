"""Cross-frame self-attention: each frame's queries attend to keys and values of chosen frames.

Which frames each frame attends to is its mode's rule (`editing.attention.modes`: none, first,
sparse-causal, full, window, and whatever else is registered there).

The processor is told the frame layout of each UNet call through `cross_attention_kwargs=layer_kwargs(layout)`
(one `LayerCall`); the number of frames per guidance branch is part of the layout, never derived from the batch.

An IP-Adapter (editing.reference) lives in the cross-attention layers' processors (diffusers'
IPAdapterAttnProcessor2_0, holding its `to_k_ip` / `to_v_ip` weights). `attention_processors` keeps it:
a layer whose current processor is one gets the new processor bound to it (`with_image_adapter`), and
`process` adds its image attention (Ye et al. 2023, eq. 5: Attn(Q, K_t, V_t) + scale Attn(Q, K_i, V_i))
to the text attention, whatever the new processor does with the text.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..motion import spatial_layer
from .merge import merge_context
from .modes import get_attention_mode


@dataclass(frozen=True)
class FrameLayout:
    """For one UNet batch: which batch positions each frame attends to, per guidance branch."""

    num_frames: int  # frames per guidance branch in this batch
    kv_index: torch.Tensor  # (num_frames, m) long: positions of the key/value frames of each frame
    kv_valid: torch.Tensor | None = None  # (num_frames, m) bool; None when every entry is used
    merge: float = 0.0  # share of the context tokens beyond the first context frame merged away (editing.attention.merge)
    borrowed: int = 0  # key/value frames after the batch's own, read from the step's anchor store (editing.attention.anchor)

    def __post_init__(self):
        if self.kv_index.shape[0] != self.num_frames:
            raise ValueError(f"kv_index has {self.kv_index.shape[0]} rows for {self.num_frames} frames")

    @functools.cached_property
    def read_positions(self) -> frozenset[int]:
        """The batch's own frame positions some frame attends to (the layout's, computed once per UNet call)."""
        return frozenset(self.kv_index[self.kv_index < self.num_frames].unique().tolist())

    @property
    def kv_frames(self) -> int:
        """Frames the key/value positions index: the batch's own, then the borrowed anchors."""
        return self.num_frames + self.borrowed


def layout_for(
    mode: str,
    frame_ids: Sequence[int],
    anchors: Sequence[int] = (0,),
    window: int = 2,
    merge: float = 0.0,
    borrowed: Sequence[int] = (),
) -> FrameLayout:
    """The attention layout of a batch holding the clip frames `frame_ids` (sorted, anchors included).

    `borrowed` anchor frames are not in the batch: their keys and values come from the step's anchor
    store (editing.attention.anchor), after the batch's own frames. The rows are those of the batch that
    holds them, so every frame attends to the same frames in the same order."""
    rule = get_attention_mode(mode)
    full = sorted(set(frame_ids) | set(borrowed))
    position = {frame: i for i, frame in enumerate(full)}
    anchor_positions = [position[a] for a in anchors if a in position]
    if rule.needs_anchor and not anchor_positions:
        raise ValueError(f"batch {list(frame_ids)} holds none of the anchor frames {list(anchors)}")
    rows = [list(row) for row in rule.rows(full, anchor_positions, window)]
    if borrowed:
        source = list(frame_ids) + list(borrowed)  # the key/value frames: own, then borrowed
        moved = {position[frame]: source.index(frame) for frame in full}
        rows = [[moved[p] for p in rows[position[frame]]] for frame in frame_ids]
    width = max(len(row) for row in rows)
    valid = None
    if any(len(row) != width for row in rows):
        valid = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows])
        rows = [row + [row[0]] * (width - len(row)) for row in rows]
    return FrameLayout(len(frame_ids), torch.tensor(rows, dtype=torch.long), valid, merge, len(borrowed))


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, inner = tensor.shape
    return tensor.view(batch, length, heads, inner // heads).transpose(1, 2)


@dataclass(frozen=True)
class LayerCall:
    """One attention layer call's state: the frame layout (None: no cross-frame attention), a replacement
    query projection (tuning), the anchor store's call (editing.attention.anchor.AnchorCall: keeps or
    supplies the anchors' self-attention keys and values) and the attention control's own per-call state,
    handed to `extend_context` and `attend`."""

    frames: FrameLayout | None = None
    to_q: torch.nn.Module | None = None
    anchor_kv: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


NO_CALL = LayerCall()  # a call without a layout: every frame attends to itself


def layer_kwargs(frames: FrameLayout | None = None, anchor_kv: Any = None, **extra: Any) -> dict[str, LayerCall]:
    """A UNet call's `cross_attention_kwargs`: the one LayerCall that every processor here reads."""
    return {"call": LayerCall(frames, anchor_kv=anchor_kv, extra=extra)}


@dataclass(frozen=True)
class Heads:
    """One attention's per-head inputs: queries (batch, heads, queries, d), keys and values (batch, heads,
    keys, d) and the mask over the keys (None: every key)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None


class CrossFrameAttnProcessor:
    """Self-attention over the frames a FrameLayout names (fused SDPA); other attention unchanged."""

    image_adapter = None  # a layer's IP-Adapter processor (its image keys, values and scale), set by with_image_adapter
    every_frame_kv = False  # True where extend_context reads every frame's own keys and values (project_kv)

    def with_image_adapter(self, adapter: torch.nn.Module) -> CrossFrameAttnProcessor:
        """A copy of this processor that also attends to the IP-Adapter image tokens with `adapter`'s weights."""
        bound = copy.copy(self)
        bound.image_adapter = adapter
        return bound

    # diffusers hands a processor the cross_attention_kwargs its __call__ names: here the one `call`
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        call: LayerCall | None = None,
    ) -> torch.Tensor:
        return self.process(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call or NO_CALL)

    def process(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        call: LayerCall,
    ) -> torch.Tensor:
        """The attention layer's forward pass with the call's frame layout, query projection, anchor store
        and the control's own state (`LayerCall`)."""
        frames, to_q, anchor_kv, extra = call.frames, call.to_q, call.anchor_kv, call.extra
        residual = hidden_states
        encoder_hidden_states, images = split_image_tokens(encoder_hidden_states)
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, length, _ = hidden_states.shape

        query = (to_q or attn.to_q)(hidden_states)
        is_self = encoder_hidden_states is None
        context = hidden_states if is_self else encoder_hidden_states
        if not is_self and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = self.project_kv(attn, context, frames if is_self else None, anchor_kv)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        if is_self and frames is not None:
            own = (key, value)
            if anchor_kv is not None:
                key, value = anchor_kv.exchange(attn, key, value, frames)
            key, value, mask = gather_frames(key, value, frames)
            key, value, mask = self.extend_context(own, key, value, mask, frames, **extra)
            if frames.merge > 0 and mask is None:  # rows of unequal width (window mode at the clip's ends) stay unmerged
                key, value, mask = merge_context(key, value, key.shape[1] // length, frames.merge)

        query, key, value = (_heads(t, attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = self.attend(attn, Heads(query, key, value, mask), is_self, **extra)
        if images is not None and self.image_adapter is not None:
            out = out + image_attention(self.image_adapter, query, images, attn.heads)
        out = out.transpose(1, 2).reshape(batch, length, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def project_kv(self, attn: torch.nn.Module, context: torch.Tensor, frames: FrameLayout | None, anchor_kv: Any = None):
        """The layer's keys and values of `context`. In self-attention only the frames some frame attends to
        (or whose keys the anchor store keeps) are projected, the others left zero and never read: with
        `first`, one frame's keys and values per branch instead of every frame's. Processors whose context
        reads every frame's own keys (a feature bank, TokenFlow) set `every_frame_kv`."""
        if frames is None or self.every_frame_kv or context.shape[0] % frames.num_frames:
            return attn.to_k(context), attn.to_v(context)  # (a batch of broken branches is refused by gather_frames)
        used = frames.read_positions | {position for _, position in getattr(anchor_kv, "keeps", ())}
        if len(used) == frames.num_frames:
            return attn.to_k(context), attn.to_v(context)
        rows, length, width = context.shape
        branches, positions = rows // frames.num_frames, sorted(used)
        picked = context.view(branches, frames.num_frames, length, width)[:, positions].reshape(-1, length, width)
        projected = []
        for project in (attn.to_k, attn.to_v):
            out = project(picked)
            full = out.new_zeros(branches, frames.num_frames, length, out.shape[-1])
            if positions:  # a chunk that reads only borrowed anchors projects none of its own frames
                full[:, positions] = out.view(branches, len(positions), length, out.shape[-1])
            projected.append(full.view(rows, length, -1))
        return projected[0], projected[1]

    def extend_context(
        self,
        own: tuple[torch.Tensor, torch.Tensor],
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        frames: FrameLayout,
        **extra,
    ):
        """Self-attention keys/values beyond the batch's own frames (a feature bank adds earlier chunks'
        here); `own` is the batch's (key, value) before gathering. Unchanged by default."""
        return key, value, mask

    def attend(self, attn: torch.nn.Module, heads: Heads, is_self: bool, **extra: Any) -> torch.Tensor:
        """softmax(Q K^T / sqrt(d)) V per head, fused; subclasses that need the probabilities override this."""
        return F.scaled_dot_product_attention(
            heads.query, heads.key, heads.value, attn_mask=heads.mask, dropout_p=0.0, is_causal=False
        )


def split_image_tokens(encoder_hidden_states: torch.Tensor):
    """(text states, IP-Adapter image tokens or None): a UNet with an IP-Adapter's image projection hands its
    cross-attention layers the tuple (text, [image tokens of each adapter])."""
    if isinstance(encoder_hidden_states, tuple):
        return encoder_hidden_states[0], encoder_hidden_states[1]
    return encoder_hidden_states, None


def image_attention(adapter: torch.nn.Module, query: torch.Tensor, images: list[torch.Tensor], heads: int) -> torch.Tensor:
    """sum over adapters of scale * softmax(Q K_i^T / sqrt(d)) V_i, per head: the image half of IP-Adapter's
    decoupled cross-attention, with the layer's `to_k_ip` / `to_v_ip` (query: (batch, heads, length, d))."""
    total = torch.zeros_like(query)
    for tokens, scale, to_k, to_v in zip(images, adapter.scale, adapter.to_k_ip, adapter.to_v_ip):
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]).to(query.dtype)  # (batch, images x tokens, width)
        key, value = _heads(to_k(tokens), heads), _heads(to_v(tokens), heads)
        total = total + float(scale) * F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return total


def bind_image_adapters(installed: dict, current: dict) -> dict:
    """`installed` with each processor bound to the IP-Adapter of its layer, where the layer has one now."""
    bound = {}
    for name, processor in installed.items():
        adapter = current.get(name)
        if adapter is None or not hasattr(adapter, "to_k_ip"):
            bound[name] = processor
        elif hasattr(processor, "with_image_adapter"):
            bound[name] = processor.with_image_adapter(adapter)
        else:
            raise TypeError(
                f"{type(processor).__name__} cannot replace the IP-Adapter processor of {name}: it has no with_image_adapter"
            )
    return bound


def gather_frames(key: torch.Tensor, value: torch.Tensor, frames: FrameLayout):
    """Keys and values of the frames each frame attends to, concatenated along the token axis.

    key, value: (branches x kv_frames, tokens, inner), the batch's own frames then any borrowed anchors
    per branch; the result has one row per frame of the batch: (branches x num_frames, m x tokens, inner)."""
    rows, length, inner = key.shape
    if rows % frames.kv_frames:
        raise ValueError(f"a batch of {rows} cannot hold whole guidance branches of {frames.kv_frames} frames")
    branches, count = rows // frames.kv_frames, frames.kv_index.shape[1]
    batch = branches * frames.num_frames
    index = frames.kv_index.to(key.device)

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        per_frame = tensor.view(branches, frames.kv_frames, length, inner)
        return per_frame[:, index].reshape(batch, count * length, inner)

    mask = None
    if frames.kv_valid is not None:
        valid = frames.kv_valid.to(key.device).repeat_interleave(length, dim=1)  # (num_frames, count * length)
        mask = valid.repeat(branches, 1)[:, None, None, :]
    return gather(key), gather(value), mask


@contextlib.contextmanager
def attention_processors(unet: torch.nn.Module, processor: Any) -> Iterator[None]:
    """Install `processor` (one object or a {layer name: processor} dict) and restore the originals after;
    layers holding an IP-Adapter keep its image attention (`bind_image_adapters`); a motion UNet's motion
    modules (editing.motion) keep their own temporal attention: only spatial layers are swapped."""
    original = dict(unet.attn_processors)
    installed = processor if isinstance(processor, dict) else {name: processor for name in original}
    installed = {name: installed[name] if spatial_layer(name) else original[name] for name in original}
    try:
        unet.set_attn_processor(bind_image_adapters(installed, original))
        yield
    finally:
        unet.set_attn_processor(original)


def cross_frame_attention(unet: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Swap every attention layer to the cross-frame processor for the duration of a block."""
    return attention_processors(unet, CrossFrameAttnProcessor())
