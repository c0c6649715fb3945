"""What the app accepts from its users when it is served to others: one policy object, built by app.py.

On this machine only (the default, 127.0.0.1), the Model field takes anything the CLI takes. Served
beyond loopback (`--host` another address, `--share`, a Hugging Face Space) it takes only Hub ids, the
built-in names, the operator's own default model, and folders or files under the model roots the
operator named (`--model-dir`, repeatable). A refusal is the same sentence whether or not the path
exists, so the field cannot be used to probe the server's file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from editing.errors import ConfigError
from editing.models import BUILTIN_MODELS, HUB_ID, HUB_PREFIX, SHAPES_MODEL

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def on_a_space() -> bool:
    """Whether the app runs on a Hugging Face Space (which sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def served_beyond_loopback(host: str | None, share: bool = False) -> bool:
    """Whether people other than this machine's users can reach the app."""
    return bool(share) or on_a_space() or (host or "127.0.0.1").strip().lower() not in LOOPBACK_HOSTS


@dataclass(frozen=True)
class ServePolicy:
    """Which model specs the app accepts; `public` when it is served beyond this machine."""

    public: bool = False
    model_roots: tuple[Path, ...] = ()
    default_model: str | None = None  # the operator's own choice (--model / $EDITING_MODEL) is always allowed

    @classmethod
    def for_launch(cls, host: str | None, share: bool, model_roots: Iterable[str | os.PathLike] = (), default_model: str | None = None) -> "ServePolicy":
        roots = tuple(Path(root).expanduser().resolve() for root in model_roots)
        return cls(served_beyond_loopback(host, share), roots, default_model)

    def refusal(self, text: str) -> ConfigError:
        builtin = ", ".join((*BUILTIN_MODELS, SHAPES_MODEL))
        where = "a folder or .safetensors file under the server's model folders, " if self.model_roots else ""
        return ConfigError(f"model {text[:80]!r} is not allowed on this server: use a Hub id (owner/name), {where}or one of {builtin}")

    def check_model(self, spec: Any) -> Any:
        """The spec to load for what a user typed, or ConfigError; unchanged when the app is not public."""
        if not self.public or spec is None or not str(spec).strip():
            return spec
        text = str(spec).strip()
        if text in (*BUILTIN_MODELS, SHAPES_MODEL) or (self.default_model and text == self.default_model.strip()):
            return text
        under_root = self._under_a_root(text)
        if under_root is not None:
            return under_root
        hub_id = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
        if HUB_ID.fullmatch(hub_id) and ".." not in hub_id and "--" not in hub_id:
            return HUB_PREFIX + hub_id  # loaded from the Hub, never as a path relative to the server's folder
        raise self.refusal(text)

    def _under_a_root(self, text: str) -> str | None:
        """The resolved path `text` names inside one of the model roots, if it is there (symlinks out refused)."""
        if "\0" in text:
            return None
        for root in self.model_roots:
            candidate = Path(text).expanduser()
            try:
                resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
            except (OSError, RuntimeError, ValueError):
                continue
            if resolved != root and resolved.is_relative_to(root) and resolved.exists():
                return str(resolved)
        return None

    def checked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Form values with the `model` field passed through `check_model`."""
        values = dict(values)
        if "model" in values:
            values["model"] = self.check_model(values["model"])
        return values


LOCAL = ServePolicy()
