"""Flow-guided attention (after FLATTEN, Cong et al., 2024): tokens on one optical-flow trajectory of the
source attend to each other.

The source's DIS flow (editing.temporal) links each latent token of frame t to the token of frame t+1
it moves to, at every UNet resolution; a link is kept only when the forward and backward flows agree
on it (mutual nearest token) and the backward flow there is valid, so occlusions and flow failures end
a trajectory cleanly instead of jumping to another object. Inside self-attention, each frame first
attends to its own frame and the anchor (spatial attention); then every token attends, per head, to
the outputs of the tokens on its trajectory in the batch's frames, itself included (trajectory
attention). A token whose trajectory is broken attends only to itself, which leaves it unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..flows import source_flows
from .control import AttentionControl
from .cross_frame import CrossFrameAttnProcessor, Heads, attention_processors

if TYPE_CHECKING:
    from ..flows import Flows


def token_links(flows: Flows, height: int, width: int) -> np.ndarray:
    """(N-1, height*width) int: for each token of frame t, its token in frame t+1, or -1 (no trustworthy link)."""
    small = flows.resized(height, width)
    links = []
    ys, xs = np.mgrid[0:height, 0:width]
    for t in range(small.num_frames - 1):
        fx = np.clip(np.rint(xs + small.forward[t][..., 0]), 0, width - 1).astype(int)
        fy = np.clip(np.rint(ys + small.forward[t][..., 1]), 0, height - 1).astype(int)
        bx = np.clip(np.rint(fx + small.backward[t][fy, fx, 0]), 0, width - 1).astype(int)
        by = np.clip(np.rint(fy + small.backward[t][fy, fx, 1]), 0, height - 1).astype(int)
        mutual = (bx == xs) & (by == ys) & small.valid[t][fy, fx]
        links.append(np.where(mutual, fy * width + fx, -1).reshape(-1))
    return np.stack(links) if links else np.zeros((0, height * width), int)


def trajectory_index(links: np.ndarray, frame_ids: Sequence[int]) -> torch.Tensor:
    """(len(frame_ids), tokens, len(frame_ids)) long: for token p of batch frame a, its token in batch
    frame b (an index into that frame's tokens), or -1 where the trajectory between them is broken."""
    tokens = links.shape[1] if len(links) else 0
    ids = list(frame_ids)
    out = np.full((len(ids), tokens, len(ids)), -1, dtype=np.int64)
    backward = np.full_like(links, -1)
    for t in range(len(links)):
        ok = links[t] >= 0
        backward[t][links[t][ok]] = np.nonzero(ok)[0]
    for a, frame in enumerate(ids):
        position = np.arange(tokens)
        out[a, :, a] = position
        for step, table in ((1, links), (-1, backward)):
            current, t = position.copy(), frame
            while True:
                nxt = t + step
                if nxt < 0 or nxt > len(links):
                    break
                table_row = table[t] if step == 1 else table[nxt]
                current = np.where(current >= 0, table_row[np.maximum(current, 0)], -1)
                t = nxt
                if t in ids:
                    out[a, :, ids.index(t)] = current
                if (current < 0).all():
                    break
    return torch.from_numpy(out)


@dataclass
class Trajectories:
    """The clip's token links at each latent resolution (computed once per edit, on first use)."""

    flows: object  # editing.flows.Flows of the source frames
    latent_height: int
    latent_width: int
    _links: dict[int, tuple[int, int, np.ndarray]] = field(default_factory=dict)
    _index: dict[tuple[int, tuple[int, ...]], torch.Tensor] = field(default_factory=dict)

    def index(self, tokens: int, frame_ids: tuple[int, ...]) -> torch.Tensor | None:
        key = (tokens, frame_ids)
        if key not in self._index:
            if tokens not in self._links:
                size = self._resolution(tokens)
                if size is None:
                    return None
                self._links[tokens] = (*size, token_links(self.flows, *size))
            self._index[key] = trajectory_index(self._links[tokens][2], frame_ids)
        return self._index[key]

    def _resolution(self, tokens: int) -> tuple[int, int] | None:
        for level in range(8):
            height, width = math.ceil(self.latent_height / 2**level), math.ceil(self.latent_width / 2**level)
            if height * width == tokens:
                return height, width
        return None


@dataclass(frozen=True)
class FlowCall:
    trajectories: Trajectories
    frames: tuple[int, ...]


class FlowAttnProcessor(CrossFrameAttnProcessor):
    """Spatial attention over the mode's frames, then trajectory attention among the batch's frames."""

    def attend(
        self, attn: torch.nn.Module, heads: Heads, is_self: bool, flow: FlowCall | None = None, **extra: Any
    ) -> torch.Tensor:
        out = super().attend(attn, heads, is_self)
        if flow is None or not is_self:
            return out
        index = flow.trajectories.index(out.shape[2], flow.frames)
        if index is None:
            return out
        return trajectory_attention(out, index.to(out.device), len(flow.frames))


def trajectory_attention(out: torch.Tensor, index: torch.Tensor, num_frames: int) -> torch.Tensor:
    """out: (branches * frames, heads, tokens, d); index: (frames, tokens, frames) with -1 for broken links.
    Each token attends to the tokens of its trajectory, itself included; softmax(o_i o_j / sqrt(d)) o_j."""
    batch, heads, tokens, dim = out.shape
    branches = batch // num_frames
    per_frame = out.view(branches, num_frames, heads, tokens, dim).transpose(1, 2)  # (branches, heads, frames, tokens, d)
    valid = index >= 0  # (frames a, tokens, frames b)
    other = torch.arange(num_frames, device=out.device).expand_as(index)
    gathered = per_frame[:, :, other, index.clamp(min=0)]  # [br, h, a, p, b] = per_frame[br, h, b, index[a, p, b]]
    scores = (per_frame.unsqueeze(-2) * gathered).sum(-1) / math.sqrt(dim)  # (branches, heads, a, tokens, b)
    scores = scores.masked_fill(~valid, float("-inf"))
    weights = F.softmax(scores.float(), dim=-1).to(out.dtype)
    mixed = (weights.unsqueeze(-1) * gathered).sum(-2)  # (branches, heads, a, tokens, d)
    return mixed.transpose(1, 2).reshape(batch, heads, tokens, dim)


class FlowControl(AttentionControl):
    """The loop's attention control for `--attention flow`: installs flow processors and hands each UNet
    call the clip's trajectories and the batch's frames."""

    def __init__(self, trajectories: Trajectories):
        self.trajectories = trajectories

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        return {"flow": FlowCall(self.trajectories, tuple(frames))}

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        with attention_processors(unet, FlowAttnProcessor()):
            yield


def make_flow_control(frames: np.ndarray, latent_height: int, latent_width: int) -> FlowControl:
    return FlowControl(Trajectories(source_flows(frames), latent_height, latent_width))
