"""The error types users see: each carries a one-line message meant for a person."""


class EditingError(Exception):
    """A failure the user can act on; its message is one line, with no traceback needed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class VideoError(EditingError):
    """The input video cannot be used: unreadable, empty, truncated, too short, too large."""


class ModelLoadError(EditingError):
    """A model spec cannot be resolved or its weights cannot be loaded."""


class ConfigError(EditingError, ValueError):
    """A setting is out of range or inconsistent with another setting."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds: a request's one-sentence refusal."""
    if not condition:
        raise ConfigError(message)


class Cancelled(EditingError):
    """The user stopped a running edit."""


class TuningError(EditingError):
    """Tuned weights cannot be used: missing, unreadable, or tuned on another base model."""
