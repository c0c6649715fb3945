"""Mask source `sam2`: one frame's mask (IMAGE@FRAME) tracked through the clip by SAM 2's video model
(transformers' `Sam2VideoModel` and `Sam2VideoProcessor`, e.g. facebook/sam2.1-hiera-tiny): the mask
is the prompt on its frame, then the model's memory carries it forward and backward."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .flow_track import frame_mask
from .registry import MaskInputs, MaskSource, register_mask_source

OBJECT_ID = 1


def load_sam2(spec: str, device: str | torch.device = "cpu"):
    """(model, processor) of a SAM 2 video checkpoint: a Hub id or a folder saved with `save_pretrained`."""
    # here, not at the top: transformers is heavy and only SAM 2 tracking needs it
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


def track_with_sam2(model: torch.nn.Module, processor: Any, frames: np.ndarray, mask: np.ndarray, index: int) -> np.ndarray:
    """(N, H, W) bool: the object whose mask on frame `index` is given, tracked by SAM 2 forward and backward
    from that frame. The mask is SAM 2's mask prompt (its video-object-segmentation setting); the model
    takes a mask prompt as its own output on that frame, so frame `index` keeps the given mask exactly."""
    if not mask.any():
        raise ConfigError("mask is empty on its frame: draw the region to track")
    weights = next(model.parameters())
    height, width = frames.shape[1:3]
    session = processor.init_video_session(video=list(frames), inference_device=weights.device, dtype=weights.dtype)
    processor.add_inputs_to_inference_session(session, frame_idx=index, obj_ids=OBJECT_ID, input_masks=mask)
    out = np.zeros(frames.shape[:3], bool)
    with torch.inference_mode():
        for reverse in (False, True):
            for result in model.propagate_in_video_iterator(session, start_frame_idx=index, reverse=reverse):
                if result.frame_idx != index:
                    masks = processor.post_process_masks([result.pred_masks], original_sizes=[[height, width]], binarize=True)[0]
                    out[result.frame_idx] = masks[0, 0].cpu().numpy()
    out[index] = mask
    return out


def sam2_masks(inputs: MaskInputs) -> np.ndarray:
    mask, index = frame_mask(inputs)
    device = getattr(inputs.backbone, "device", "cpu")
    model, processor = load_sam2(inputs.config.mask_model, device)
    return track_with_sam2(model, processor, inputs.frames, mask, index)


register_mask_source(MaskSource("sam2", sam2_masks, help="one frame's mask tracked by SAM 2's video model", offline=False))
