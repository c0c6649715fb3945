"""Assemble the page: upload, prompt, model, trimming and sampler settings, run, output."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from editing.models import DEFAULT_MODEL, RANDOM_WEIGHTS_NOTE

from .handlers import EditFn, make_edit_handler, model_choices

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def build_demo(edit_fn: EditFn | None = None, default_model: str = DEFAULT_MODEL) -> gr.Blocks:
    """The whole app; `edit_fn` replaces the library call in tests."""
    handler = make_edit_handler(edit_fn) if edit_fn else make_edit_handler()
    with gr.Blocks(title="Text-driven video editing", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Edit a video with text\nUpload a short clip, describe the result, press Run.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Source clip", sources=["upload"])
                prompt = gr.Textbox(label="Prompt", placeholder="a watercolor painting of a man skiing")
                model = gr.Dropdown(
                    model_choices(),
                    value=default_model,
                    allow_custom_value=True,
                    label="Model",
                    info=f"Hub id, local folder or .safetensors file. tiny / sd15-random: {RANDOM_WEIGHTS_NOTE}.",
                )
                with gr.Accordion("Frames", open=False):
                    with gr.Row():
                        start = gr.Number(0, label="Start (s)", minimum=0)
                        end = gr.Number(None, label="End (s, empty = clip end)", minimum=0)
                    with gr.Row():
                        stride = gr.Slider(1, 8, value=1, step=1, label="Stride")
                        frames = gr.Slider(2, 64, value=8, step=1, label="Frames")
                        size = gr.Slider(128, 768, value=256, step=64, label="Long side (px)")
                with gr.Accordion("Sampler", open=False):
                    with gr.Row():
                        steps = gr.Slider(1, 50, value=10, step=1, label="Steps")
                        guidance = gr.Slider(1, 15, value=7.5, step=0.5, label="Guidance")
                    with gr.Row():
                        strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength")
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                run = gr.Button("Run", variant="primary")
            with gr.Column():
                output = gr.Video(label="Edited clip")
                summary = gr.JSON(label="Details")
        examples = sorted(str(p) for p in ASSETS.glob("*.mp4"))
        if examples:
            gr.Examples([[path, "a watercolor painting"] for path in examples], inputs=[video, prompt])
        run.click(
            handler,
            inputs=[video, prompt, model, start, end, stride, frames, size, steps, guidance, strength, seed],
            outputs=[output, summary],
            api_name="edit",
            concurrency_id="gpu",
            concurrency_limit=1,
        )
    demo.queue(max_size=16)
    return demo
