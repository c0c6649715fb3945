"""ControlNet conditions: kinds (editing.condition_kinds, the registry), extractors (canny, pose, depth,
softedge) and a user's condition video. Importing this package loads no extractor; its functions are
imported on first use."""

from ..condition_kinds import (
    CONDITION_KINDS,
    ConditionKind,
    condition_kind,
    condition_kind_names,
    get_condition_kind,
    register_condition_kind,
)

_LAZY = ("condition_cache_key", "conditions_from_video", "extract_conditions", "register_extractor")


def __getattr__(name: str):
    if name in _LAZY:
        # here, not at the top: importing the package loads no extractor (see above)
        from . import extractors

        return getattr(extractors, name)
    raise AttributeError(name)


__all__ = [
    "CONDITION_KINDS",
    "ConditionKind",
    "condition_kind",
    "condition_kind_names",
    "get_condition_kind",
    "register_condition_kind",
    *_LAZY,
]
