"""The One-shot tab: tune the model on the clip, then edit with the tuned weights (issue 5, in progress)."""

from __future__ import annotations

import gradio as gr

from .backend import Backend


def create_tab(backend: Backend, default_model: str) -> None:
    """Until one-shot tuning lands in the library, the tab says so instead of offering a dead button."""
    gr.Markdown(
        "### One-shot tuning\n"
        "Tuning the model on this clip (Tune-A-Video style) and editing with the tuned weights will appear here "
        "once `editing/tuning.py` lands. Meanwhile use the Edit tab, which works on the frozen model."
    )
