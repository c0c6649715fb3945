"""Token merging across frames inside self-attention (after VidToMe, Li et al., 2024, and ToMe for SD).

When a frame attends to several frames (its cross-frame context), many of their tokens are near copies
of each other: the same background, the same object a frame later. Before attention, a `ratio` share
of the context tokens of all but the first context frame is merged into its most similar token of the
first context frame (bipartite soft matching on the keys, Bolya et al., 2023): keys and values are
averaged, weighted by how many tokens each already holds, and attention adds log(size) to a merged
token's score (proportional attention), so a token standing for k identical ones weighs as much as
they did. Queries are not merged, so nothing needs unmerging and every mode keeps its output shape.
Saved: the attention's cost is queries x keys, so it falls by the share of keys merged
(`merged_share`).
"""

from __future__ import annotations

import math

import torch


def merged_share(ratio: float, context_frames: int) -> float:
    """The share of a row's keys merged away: `ratio` of the tokens outside its first context frame."""
    return ratio * (context_frames - 1) / context_frames if context_frames > 1 else 0.0


def merge_context(key: torch.Tensor, value: torch.Tensor, context_frames: int, ratio: float):
    """Merge a `ratio` share of the tokens of context frames 2..m into frame 1's, per batch row.

    key, value: (batch, m * length, inner), frame-major along the tokens. Returns the shorter key and
    value and an additive attention bias (batch, 1, 1, tokens) of log(size), or the inputs and None when
    nothing is merged.
    """
    batch, tokens, inner = key.shape
    if ratio <= 0 or context_frames < 2:
        return key, value, None
    length = tokens // context_frames
    dst_k, src_k = key[:, :length], key[:, length:]
    dst_v, src_v = value[:, :length], value[:, length:]
    count = min(src_k.shape[1], int(math.floor(ratio * src_k.shape[1])))
    if count == 0:
        return key, value, None
    keys_out, values_out, biases = [], [], []
    for row in range(batch):  # one row at a time bounds the similarity matrix to (sources, destinations)
        similarity = (
            torch.nn.functional.normalize(src_k[row].float(), dim=-1)
            @ torch.nn.functional.normalize(dst_k[row].float(), dim=-1).T
        )
        best, target = similarity.max(dim=-1)
        order = best.argsort(descending=True)
        merged, kept = order[:count], order[count:].sort().values
        size = torch.ones(length, device=key.device, dtype=torch.float32)
        size.index_add_(0, target[merged], torch.ones(count, device=key.device))
        k = dst_k[row].float().index_add(0, target[merged], src_k[row, merged].float()) / size[:, None]
        v = dst_v[row].float().index_add(0, target[merged], src_v[row, merged].float()) / size[:, None]
        keys_out.append(torch.cat([k.to(key.dtype), src_k[row, kept]]))
        values_out.append(torch.cat([v.to(value.dtype), src_v[row, kept]]))
        biases.append(torch.cat([size.log(), torch.zeros(len(kept), device=key.device)]))
    bias = torch.stack(biases)[:, None, None, :].to(key.dtype)
    return torch.stack(keys_out), torch.stack(values_out), bias
