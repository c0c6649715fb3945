"""What the app accepts from its users when it is served to others: one policy object, built by app.py.

On this machine only (the default, 127.0.0.1), the Model field takes anything the CLI takes. Served
beyond loopback (`--host` another address, `--share`, a Hugging Face Space) it takes only Hub ids, the
built-in names, the operator's own default model, and folders or files under the model roots the
operator named (`--model-dir`, repeatable). A refusal is the same sentence whether or not the path
exists, so the field cannot be used to probe the server's file system.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    def for_launch(
        cls, host: str | None, share: bool, model_roots: Iterable[str | os.PathLike] = (), default_model: str | None = None
    ) -> ServePolicy:
        roots = tuple(Path(root).expanduser().resolve() for root in model_roots)
        return cls(served_beyond_loopback(host, share), roots, default_model)

    def refusal(self, text: str) -> ConfigError:
        builtin = ", ".join((*BUILTIN_MODELS, SHAPES_MODEL))
        where = "a folder or .safetensors file under the server's model folders, " if self.model_roots else ""
        return ConfigError(
            f"model {text[:80]!r} is not allowed on this server: use a Hub id (owner/name), {where}or one of {builtin}"
        )

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
        """Form values with the `model` field passed through `check_model` and every other value that names a
        file, folder or Hub id (`location_options`) through `check_location`."""
        values = dict(values)
        if "model" in values:
            values["model"] = self.check_model(values["model"])
        if self.public:
            for name, option in location_options().items():
                if name != "model" and values.get(name) not in (None, "", []):
                    values[name] = self.check_location(option, values[name])
        return values

    def check_location(self, option, value: Any) -> Any:
        """`value` of an option naming a file, folder or Hub id, as this server allows it: a Hub id (where the
        option takes one; `hub:` marks it as one for the loaders that read the mark), a plain name (a built-in
        one such as `random`), or a path under the model roots; any other path is refused in one sentence that
        is the same whether or not it exists. A list (a repeatable option) is checked item by item."""
        if isinstance(value, (list, tuple)):
            return [self.check_location(option, item) for item in value]
        text = str(value).strip()
        if option.kind == "per_item":  # KIND=SPEC
            key, sep, spec = text.partition("=")
            return f"{key}{sep}{self._location(option, spec, text)}" if sep else self._location(option, text, text)
        for mark in (":", "@"):  # SPEC:SCALE, FILE@FRAME
            head, sep, tail = text.rpartition(mark)
            if sep and head and _is_number(tail):
                return f"{self._location(option, head, text)}{mark}{tail}"
        return self._location(option, text, text)

    def _location(self, option, spec: str, shown: str) -> str:
        spec = spec.strip()
        writes = option_writes(option)
        if not writes:
            under_root = self._under_a_root(spec)
            if under_root is not None:
                return under_root
            if option_takes_hub_ids(option) and PLAIN_NAME.fullmatch(spec) and ".." not in spec:
                return spec  # a built-in or shipped name (random, shapes, a -lora asset), never a path here
            hub_id = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
            if option_takes_hub_ids(option) and HUB_PATH.fullmatch(hub_id) and ".." not in hub_id and "--" not in hub_id:
                return HUB_PREFIX + hub_id if option.name in HUB_MARKED else hub_id
        raise self.location_refusal(option, shown)

    def location_refusal(self, option, text: str) -> ConfigError:
        name = option.name
        if option_writes(option):
            return ConfigError(f"{name} cannot be set on this server: it would write a file on the server")
        ways = (["a Hub id (owner/name[/file])"] if option_takes_hub_ids(option) else []) + (
            ["a path under the server's model folders"] if self.model_roots else []
        )
        allowed = f"use {' or '.join(ways)}" if ways else "it takes no path on this server"
        return ConfigError(f"{name} {text[:80]!r} is not allowed on this server: {allowed}")


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")  # a name with no folder in it
# owner/name[/file in the repo]
HUB_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9_.-]+)*")
# options whose loaders read `hub:ID` as a Hub id only (editing.lora.lora_location); the model's is check_model's
HUB_MARKED = ("lora",)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def option_writes(option) -> bool:
    """Whether the option names a file the edit writes (its help says so)."""
    return option.help.lower().startswith(("write", "output"))


def option_takes_hub_ids(option) -> bool:
    """Whether the option takes a Hub id: its help says so, or its metavar is a SPEC (Hub id, folder or file)."""
    return "hub id" in option.help.lower() or "SPEC" in (option.metavar or "")


@functools.lru_cache(maxsize=1)
def location_options() -> dict[str, Any]:
    """The request schema's options (edit and tune) whose value names a file, folder or Hub id, read from the
    schema: a metavar naming a SPEC, FILE, PATH, DIR or VIDEO, or help saying it takes a Hub id or a folder;
    not those with a file kind, which the forms take as uploads (ui.widgets.option_widget), never as paths."""
    from editing import requests

    found = {}
    for command in ("edit", "tune"):
        for option in requests.options(command):
            metavar, text = option.metavar or "", option.help.lower()
            names_one = (
                any(word in metavar for word in ("SPEC", "FILE", "PATH", "DIR", "VIDEO")) or "hub id" in text or "folder" in text
            )
            if names_one and option.file is None:
                found[option.name] = option
    return found


LOCAL = ServePolicy()
