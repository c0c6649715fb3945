"""Mask source `sam2`: one frame's mask (IMAGE@FRAME) tracked through the clip by SAM 2's video model
(transformers' `Sam2VideoModel` and `Sam2VideoProcessor`, e.g. facebook/sam2.1-hiera-tiny): the mask
is the prompt on its frame, then the model's memory carries it forward and backward."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .registry import MaskInputs, MaskSource, register_mask_source

OBJECT_ID = 1


def load_sam2(spec: str, device: str | torch.device = "cpu"):
    """(model, processor) of a SAM 2 video checkpoint: a Hub id or a folder saved with `save_pretrained`."""
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    try:
        model = Sam2VideoModel.from_pretrained(spec)
        processor = Sam2VideoProcessor.from_pretrained(spec)
    except OSError as exc:
        raise ConfigError(
            f"mask_model {spec} cannot be loaded (no SAM 2 checkpoint there, and the Hugging Face Hub is not "
            f"reachable to download it): use --mask-track flow offline"
        ) from exc
    return model.to(device).eval(), processor


def prompt_point(mask: np.ndarray) -> list[float]:
    """The click standing for a drawn mask: its innermost pixel (farthest from its edge), (x, y). One click:
    SAM 2 then predicts several masks and keeps its best (with more clicks transformers 5.23's video model
    stores an object pointer of the wrong rank and fails on the next frame)."""
    import cv2

    inside = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = divmod(int(inside.argmax()), mask.shape[1])
    return [float(x), float(y)]


def track_with_sam2(model: torch.nn.Module, processor: Any, frames: np.ndarray, mask: np.ndarray, index: int) -> np.ndarray:
    """(N, H, W) bool: SAM 2's masks of the object given by `mask` on frame `index`, for every frame."""
    device = next(model.parameters()).device
    height, width = frames.shape[1:3]
    session = processor.init_video_session(video=list(frames), inference_device=device, dtype=next(model.parameters()).dtype)
    if not mask.any():
        raise ConfigError("mask is empty on its frame: draw the region to track")
    processor.add_inputs_to_inference_session(
        session,
        frame_idx=index,
        obj_ids=OBJECT_ID,
        input_points=[[[prompt_point(mask)]]],
        input_labels=[[[1]]],
        original_size=(height, width),
    )
    out = np.zeros(frames.shape[:3], bool)
    out[index] = mask
    with torch.inference_mode():
        for reverse in (False, True):
            for result in model.propagate_in_video_iterator(session, start_frame_idx=index, reverse=reverse):
                masks = processor.post_process_masks([result.pred_masks], original_sizes=[[height, width]], binarize=True)[0]
                if result.frame_idx != index:
                    out[result.frame_idx] = masks[0].reshape(-1, height, width)[0].cpu().numpy().astype(bool)
    return out


def sam2_masks(inputs: MaskInputs) -> np.ndarray:
    from .flow_track import frame_mask

    mask, index = frame_mask(inputs)
    device = getattr(inputs.backbone, "device", "cpu")
    model, processor = load_sam2(inputs.config.mask_model, device)
    return track_with_sam2(model, processor, inputs.frames, mask, index)


register_mask_source(MaskSource("sam2", sam2_masks, help="one frame's mask tracked by SAM 2's video model", offline=False))
