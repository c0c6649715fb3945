"""Text-driven video editing over a frozen Stable Diffusion model."""

__version__ = "0.1.0"
