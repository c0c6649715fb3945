"""Flow-guided attention (--attention flow, after FLATTEN): trajectories from the source's optical flow."""

from __future__ import annotations

import numpy as np
import torch

from editing.attention.flow import token_links, trajectory_attention, trajectory_index
from editing.flows import source_flows


def _moving_square(frames=3, size=64, step=8):
    rng = np.random.default_rng(0)
    background = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    clips = []
    for t in range(frames):
        frame = background.copy()
        x = 8 + t * step
        frame[24:40, x : x + 16] = np.array([230, 40, 40], np.uint8)
        frame[24:40, x : x + 16, 1] = np.arange(16, dtype=np.uint8)[None, :] * 12  # texture the flow can track
        clips.append(frame)
    return np.stack(clips)


def test_links_follow_the_motion_and_keep_the_background():
    links = token_links(source_flows(_moving_square()), 8, 8)  # 8 px per latent token: the square moves one token
    inside = 3 * 8 + 2  # row 3 (pixels 24..31), column 2 (pixels 16..23): inside the square in frame 0
    assert links[0, inside] == inside + 1
    assert links[0, 7 * 8 + 7] in (7 * 8 + 7, -1)  # a far background corner stays put (or is dropped), never jumps


def test_trajectories_chain_and_end_cleanly():
    links = np.array([[1, -1, 2], [0, 2, 1]])  # 3 frames, 3 tokens
    index = trajectory_index(links, (0, 1, 2)).numpy()
    assert index[0, 0].tolist() == [0, 1, 2]  # 0 -> 1 -> 2
    assert index[0, 1].tolist() == [1, -1, -1]  # broken after frame 0: ends, never resumes
    assert index[2, 2].tolist() == [0, 1, 2]  # followed backwards: 2 <- 1 <- 0
    assert index[1, 0].tolist() == [-1, 0, 0]  # token 0 of frame 1 has no predecessor (nobody links to it)


def test_a_token_with_no_trajectory_is_unchanged():
    out = torch.randn(2 * 3, 2, 4, 8, generator=torch.Generator().manual_seed(0))  # 2 branches x 3 frames
    index = torch.full((3, 4, 3), -1)
    for a in range(3):
        index[a, :, a] = torch.arange(4)
    assert torch.allclose(trajectory_attention(out, index, 3), out)


def test_tokens_on_one_trajectory_are_mixed():
    out = torch.randn(3, 1, 2, 4, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([[[0, 0, 0], [1, 1, 1]]] * 3)  # every token sees its own position in all 3 frames
    mixed = trajectory_attention(out, index, 3)
    assert not torch.allclose(mixed, out)
    identical = out[:1].repeat(3, 1, 1, 1)
    assert torch.allclose(trajectory_attention(identical, index, 3), identical, atol=1e-6)  # copies stay copies


def test_an_edit_with_flow_attention_runs_end_to_end(tmp_path):
    from editing.pipeline import edit_video

    from .conftest import small_edit

    flow, first = (
        edit_video(small_edit(tmp_path, "flow", attention="flow")),
        edit_video(small_edit(tmp_path, "first", attention="first")),
    )
    assert flow.images.shape == first.images.shape and not np.array_equal(flow.images, first.images)
