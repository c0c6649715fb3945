"""The Region tab: draw the region on the clip's first frame (or upload a mask), Track shows the mask over the
clip (followed along the source's flow, or by SAM 2), then Edit changes only inside it or Remove takes out what
it covers. Grow, feather and the tracker are the schema's options (`editing.masks.options`).

The mask reaches the edit as a file this app wrote or received (`mask`, an upload in the /edit API too),
never as a path a client names."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from editing.errors import Cancelled, EditingError

from . import hints
from .backend import Backend, CancelToken
from .edit_tab import GPU_QUEUE, gradio_progress
from .forms import make_request, one_sentence_errors
from .gpu import gpu
from .widgets import named_handler

FRAMES = 16  # frames of the clip the tab edits (its first ones)
BRUSH = "#ff28c8"
RUN_FIELDS = ["video", "drawing", "upload", "model", "prompt", "grow", "feather", "token", "tracker"]


def clip_frames(video: str | None, model: str | None) -> np.ndarray:
    """The first FRAMES frames of the clip at the model's own size (what an edit of it reads)."""
    from editing.config import FrameSelection
    from editing.models import native_size
    from editing.video_io import read_clip

    if not video:
        raise EditingError("upload a clip first")
    return read_clip(video, FrameSelection(max_frames=FRAMES, size=native_size(model))).frames


def drawn_mask(drawing: dict | None, height: int, width: int) -> np.ndarray | None:
    """(H, W) bool of what was painted on the editor's layers (None when nothing was)."""
    if not drawing or not drawing.get("layers"):
        return None
    import cv2

    painted = np.zeros(np.asarray(drawing["layers"][0]).shape[:2], bool)
    for layer in drawing["layers"]:
        layer = np.asarray(layer)
        painted |= (
            layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[-1] == 4 else layer.reshape(*layer.shape[:2], -1).max(-1) > 0
        )
    if not painted.any():
        return None
    return cv2.resize(painted.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def mask_file(drawing: dict | None, upload: str | None, video: str | None, model: str | None) -> str:
    """The mask to use: an uploaded one, else the drawing saved as frame 0's mask in a fresh folder."""
    if upload:
        return upload
    frames = clip_frames(video, model)
    mask = drawn_mask(drawing, *frames.shape[1:3])
    if mask is None:
        raise EditingError("draw the region on the first frame, or upload a mask")
    from PIL import Image

    path = Path(tempfile.mkdtemp(prefix="region-")) / "drawn-mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return str(path)


def first_frame(video: str | None, model: str | None):
    """The editor's background: the clip's first frame, as the edit reads it."""
    if not video:
        return None
    try:
        frame = clip_frames(video, model)[0]
    except EditingError as exc:
        raise gr.Error(str(exc)) from exc
    return {"background": frame, "layers": [], "composite": frame}


def make_handlers(backend: Backend):
    @one_sentence_errors
    def track(video, drawing, upload, model, grow, feather, tracker=None, progress=gr.Progress()) -> str:  # noqa: B008 (Gradio's progress tracker)
        """The mask over the clip (an mp4 in a fresh output folder)."""
        from editing.config import EditConfig
        from editing.core import EditParts
        from editing.masks.options import MaskConfig
        from editing.region import clip_mask, write_preview

        tracker = tracker or hints.app_default(hints.option("mask_track"))
        progress(0, desc="Tracking the mask with SAM 2" if tracker == "sam2" else "Tracking the mask along the clip's flow")
        model = backend.policy.check_model(model)  # before the model's size is looked up: no path is probed
        frames = clip_frames(video, model)
        config = MaskConfig(
            mask=mask_file(drawing, upload, video, model),
            region=True,
            mask_grow=int(grow),
            mask_feather=int(feather),
            mask_track=tracker,
        )
        mask = clip_mask(frames, EditParts(EditConfig(prompt="track"), masking=config))
        path = str(Path(backend.output_dir()) / "mask-overlay.mp4")
        write_preview(path, frames, mask)
        return path

    def run(action: str):
        @one_sentence_errors
        def handler(values: dict[str, Any], progress) -> tuple[Any, Any]:
            """The edit inside the region, or the removal: the result video and its details."""
            video, token = values["video"], values.get("token") or CancelToken()
            values["model"] = backend.policy.check_model(values["model"])  # before the mask is drawn at its size
            options = {"prompt": values["prompt"], "model": values["model"], "frames": FRAMES, action: True}
            options |= {
                "mask": mask_file(values["drawing"], values["upload"], video, values["model"]),
                "mask_grow": int(values["grow"]),
                "mask_feather": int(values["feather"]),
            }
            if values.get("tracker"):
                options["mask_track"] = values["tracker"]
            request = make_request(backend.checked(options), video, backend.output_dir())
            try:
                outputs = backend.edit(request, gradio_progress(progress, request), token)
            except Cancelled:
                token.reset()
                return gr.skip(), {"message": "stopped: the last result is kept"}
            return outputs.get(".mp4"), outputs.details()

        handler.__name__ = f"region_{action}"
        return named_handler(gpu(handler), RUN_FIELDS, {})

    return track, run("region"), run("remove")


def create_tab(backend: Backend, default_model: str) -> dict[str, gr.components.Component]:
    """Lay out the tab and wire it to the backend."""
    track, edit, remove = make_handlers(backend)
    with gr.Row():
        with gr.Column():
            video = gr.File(label="Upload a clip", file_types=["video"], elem_id="region-clip", height=110)
            drawing = gr.ImageEditor(
                label="Draw the region on the first frame", type="numpy", sources=[], layers=False, elem_id="region-editor",
                brush=gr.Brush(colors=[BRUSH], color_mode="fixed", default_size=12), height=360,
            )  # fmt: skip
            upload = gr.File(
                label="…or upload a mask (white = region): an image of the first frame, or a mask video",
                file_types=["image", "video"],
                elem_id="region-mask",
                height=90,
            )
            model = gr.Textbox(default_model, label="Model", elem_id="region-model")
            prompt = gr.Textbox(
                label="Prompt",
                placeholder="Edit: what the region becomes (the whole scene's caption). Remove: the background behind the "
                "object.",
                elem_id="region-prompt",
            )
            with gr.Row():
                grow = hints.slider("mask_grow", label="Grow (px)")
                feather = hints.slider("mask_feather", label="Feather (px)")
                tracker = hints.dropdown(
                    "mask_track",
                    label="Track along",
                    info="flow: the clip's own motion, offline; sam2: the SAM 2 video model (downloads it)",
                    elem_id="region-tracker",
                )
            with gr.Row():
                track_button = gr.Button("Track", elem_id="region-track")
                edit_button = gr.Button("Edit region", variant="primary", elem_id="region-edit")
                remove_button = gr.Button("Remove", elem_id="region-remove")
                stop_button = gr.Button("Stop", variant="stop", elem_id="region-stop")
        with gr.Column():
            overlay = gr.Video(label="Mask over the clip", elem_id="region-overlay", height=300)
            result = gr.Video(label="Result", elem_id="region-result", height=300)
            details = gr.JSON(label="Details", elem_id="region-details")
    token = gr.State(CancelToken())
    video.change(first_frame, [video, model], drawing, api_visibility="private")
    track_button.click(track, [video, drawing, upload, model, grow, feather, tracker], overlay, api_name="region_track")
    inputs = [video, drawing, upload, model, prompt, grow, feather, token, tracker]
    runs = [
        edit_button.click(
            edit,
            inputs,
            [result, details],
            api_name="region_edit",
            concurrency_id=GPU_QUEUE,
            concurrency_limit=backend.concurrency,
        ),
        remove_button.click(
            remove,
            inputs,
            [result, details],
            api_name="region_remove",
            concurrency_id=GPU_QUEUE,
            concurrency_limit=backend.concurrency,
        ),
    ]
    stop_button.click(None, cancels=runs, api_visibility="private")
    return {"video": video, "drawing": drawing, "upload": upload, "prompt": prompt, "overlay": overlay, "result": result}
