"""The Gradio app: thin handlers over the `editing` library."""

from .layout import build_demo

__all__ = ["build_demo"]
