"""ControlNet conditions: extract them from frames (canny, pose, depth, softedge) or read a user's video."""

from .extractors import (
    EXTRACTORS,
    condition_cache_key,
    conditions_from_video,
    extract_conditions,
    register_extractor,
)

__all__ = ["EXTRACTORS", "condition_cache_key", "conditions_from_video", "extract_conditions", "register_extractor"]
