"""EditRequest, TuneRequest and the one option schema the CLI, eval specs and the app all map through.

The schema is read from the request dataclasses and the configs they hold (the idea of transformers'
HfArgumentParser): every init field is one option, named after the field, typed by its annotation, with
the field's default and its `metadata["help"]`. A nested config's fields are options too. So a field
added to a config is a `python -m editing` flag, an eval-spec key and an app form field / API parameter
with no other edit; `options(command)` lists them, `add_arguments` makes the argparse flags,
`defaults` / `coerce` / `complete` check loose values (YAML, widgets), and `edit_request` /
`tune_request` build the validated request from option values (an argparse Namespace or a dict).

Field metadata keys (all optional):
  help        the option's help; "{choices}" and "{default}" in it are filled in when a parser is built
  flag        the command-line spelling, or a tuple of spellings (the first is shown, the rest are aliases);
              default "--" + the option's name with "-" for "_"
  dest        the option's name (argparse dest, spec key, form field); default the field's name
  choices     a tuple, or a zero-argument callable returning one (called when a parser or form is built); a
              registry's names function (editing.registries) also gives each choice's help to --help and the docs
  range       the accepted values as text, for --help's reference and the docs, e.g. "[1, 1000]", "(0, 1]",
              "[2, inf) or 0" (the config's __post_init__ enforces it; tests/test_docs.py checks they agree)
  metavar     argparse's metavar
  positional  True: a positional argument (the video)
  required    True: the command line must give it even though the field has a default
  option      False: not an option; the field keeps its default
  none_as     the option value that stands for None (`--frames 0` = all frames)
  resolve     the name of a RESOLVERS entry computing the value when the option is left out (None)
  word        bool fields sharing one `dest` form one comma-separated option (`--smooth flow,color`);
              the field is True when its word is listed
  group       the argparse group of a nested config's options (default GROUPS[config class])
  file        the option names a file of this kind ("image"): forms give it an upload widget, never a path box
  app         how the app's forms show it where they differ from the command line, each difference with its
              reason under "why": "default" (the widget's starting value), "min" / "max" / "step" (a slider's
              span inside "range"), "form": False (no form sets it: files and places are the app's business),
              "api": False (an /edit widget sets it some other way, or it stays at its default); see ui/hints.py

Field types: str, int, float, bool (a store_true flag; `--no-NAME` when the default is True), and
`X | None`; `tuple[str, ...]` is comma-separated text (`--blend-words W1,W2`); `tuple[tuple[str, float],
...]` a repeatable WORD=VALUE (`--reweight`); `tuple[Item, ...]` a repeatable text read by
`Item.parse` (`--control KIND[:SCALE[:START:END]]`), where an Item field with a `flag` is a repeatable
KEY=VALUE option setting that field of the item whose first field is KEY (`--control-model KIND=SPEC`).
A `Config | None = None` field is built only when its fields without a default are given
(`--source-prompt`); its other options then need them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compat import check as check_combination
from .config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection, VideoLimits, default_keyframes
from .errors import ConfigError, require
from .lora import ModelOptions
from .masks.options import MaskConfig
from .models import BUILTIN_MODELS, DEFAULT_MODEL, RANDOM_WEIGHTS_NOTE, SHAPES_NOTE, ModelSpec, native_size
from .presets import apply_preset, preset_names
from .registries import choice_help
from .tuned_file import tuned_attention

OUTPUT_SUFFIXES = (".mp4", ".gif", ".zip")
MIXED_PRECISION = ("no", "fp16", "bf16")
MODEL_HELP = f"Hub id, local diffusers folder, .safetensors file, shapes ({SHAPES_NOTE}), or {'/'.join(BUILTIN_MODELS)} ({RANDOM_WEIGHTS_NOTE})"
DEVICE_HELP = "auto, cpu, cuda or mps"


# ---------------------------------------------------------------- the requests


@dataclass(frozen=True)
class EditRequest:
    """One edit: which clip, which frames, which model, what to make, where to write it."""

    video: str = field(metadata={"positional": True, "help": "the video to edit"})
    output: str = field(
        metadata={
            "app": {"form": False, "why": "the app writes into its own folder"},
            "flag": "--out",
            "dest": "out",
            "help": "output file: .mp4, .gif or .zip (PNG frames)",
        }
    )
    edit: EditConfig
    selection: FrameSelection = FrameSelection()
    engine: EngineConfig = EngineConfig()
    model: str = field(default=DEFAULT_MODEL, metadata={"help": MODEL_HELP})
    device: str | None = field(
        default="auto", metadata={"app": {"api": False, "why": "the app's process decides where it runs"}, "help": DEVICE_HELP}
    )
    dtype: str | None = field(
        default="auto",
        metadata={"app": {"api": False, "why": "the app's process decides where it runs"}, "help": "auto, fp32, fp16 or bf16"},
    )
    limits: VideoLimits = field(default=VideoLimits(), metadata={"option": False})
    attention_edit: AttentionEditConfig | None = None
    masking: MaskConfig = field(default=MaskConfig(), metadata={"group": "regions and removal (editing.region, editing.removal)"})
    tuned: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "the one-shot tab's own tuning, never a path from a form"},
            "metavar": "FILE",
            "help": "edit with one-shot tuned weights from `tune` (in the attention mode they were tuned with)",
        },
    )
    # more files written from the same frames, e.g. a .gif and a .zip beside the .mp4
    also_write: tuple[str, ...] = field(default=(), metadata={"option": False})
    model_options: ModelOptions = ModelOptions()  # LoRAs (fused or not) and the autoencoder (editing.lora)
    # decode (and write) only these edited frames, e.g. a preview's; None = all
    decode_frames: tuple[int, ...] | None = field(default=None, metadata={"option": False})
    preset: str | None = field(
        default=None,
        metadata={
            "help": "speed preset (editing.presets) setting defaults that explicit options override: {choices}",
            "choices": preset_names,
        },
    )

    def __post_init__(self):
        for output in (self.output, *self.also_write):
            if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
                raise ConfigError(f"output {Path(output).name} must end in {', '.join(OUTPUT_SUFFIXES)}")
        check_combination(self)  # which features combine (editing.compat)
        ModelSpec.parse(self.model)  # a malformed spec fails now, before any decoding


@dataclass(frozen=True)
class TuneConfig:
    """How to tune: the source prompt, the frames, the optimiser and the memory savers."""

    prompt: str = field(metadata={"help": "what the source clip shows; the tuning's text condition"})
    selection: FrameSelection = field(
        default=FrameSelection(max_frames=8, size=512), metadata={"help": "frames and size to tune on"}
    )
    steps: int = field(
        default=300,
        metadata={
            "app": {"max": 1000, "why": "a slider: more than 1000 tuning steps overfit the clip and take hours"},
            "help": "optimiser steps (Tune-A-Video uses 300-500)",
            "range": "[1, 100000]",
        },
    )
    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW learning rate"})
    seed: int = field(default=0, metadata={"help": "seed of the temporal layers' initialisation, timesteps and noise"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm", "option": False})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass (less memory, slower)"}
    )
    mixed_precision: str = field(default="no", metadata={"help": "autocast precision (GPU only)", "choices": MIXED_PRECISION})

    def __post_init__(self):
        require(isinstance(self.prompt, str) and self.prompt.strip() != "", "tuning prompt must not be empty")
        require(1 <= self.steps <= 100000, f"tuning steps must be between 1 and 100000, got {self.steps}")
        require(
            math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1,
            f"learning rate must be in (0, 1], got {self.learning_rate}",
        )
        require(0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed}")
        require(
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0,
            f"max grad norm must be positive, got {self.max_grad_norm}",
        )
        require(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed precision must be one of {', '.join(MIXED_PRECISION)}; got {self.mixed_precision!r}",
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TuneRequest:
    """One tuning: which clip, which model, how, and where to write the tuned weights."""

    video: str = field(metadata={"positional": True, "help": "the video to tune on"})
    config: TuneConfig
    output: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "tunings stay in the app's cache"},
            "flag": "--out",
            "dest": "out",
            "required": True,
            "help": "tuned weights, a .safetensors file (its settings go beside it as .json)",
        },
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": f"base model: Hub id, folder, .safetensors file, shapes, or {'/'.join(BUILTIN_MODELS)}"},
    )
    device: str | None = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str | None = field(default="auto", metadata={"help": "auto, fp32, fp16 or bf16 (of the frozen model)"})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "where the cache lives is the app's business"},
            "help": "where tunings are cached for reuse",
        },
    )
    limits: VideoLimits = field(default=VideoLimits(), metadata={"option": False})

    def __post_init__(self):
        if self.output is not None and Path(self.output).suffix != ".safetensors":
            raise ConfigError(f"tuned weights {Path(self.output).name} must end in .safetensors")
        ModelSpec.parse(self.model)


# The request class behind each command; tests may swap in a subclass with more fields.
COMMANDS: dict[str, type] = {"edit": EditRequest, "tune": TuneRequest}
# Argparse groups of nested configs' options (a field's `group` metadata wins).
GROUPS: dict[type, str] = {AttentionEditConfig: "attention editing (Prompt-to-Prompt, FateZero, null-text inversion)"}


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    """One option: its name (argparse dest, eval-spec key, form field), spellings, type, default and where it lands."""

    name: str
    flags: tuple[str, ...]  # () for a positional argument
    type: type  # of one value: str, int, float or bool (a repeatable option holds a list of str)
    default: Any  # in option form: `frames` 16 (0 = all), `smooth` "", `control` [], `size` None (the model's own)
    help: str = ""
    choices: Any = None  # a tuple, or a zero-argument callable returning one
    metavar: str | None = None
    required: bool = False  # the command line must give it
    needed: bool = False  # the request must have it (its field has no default)
    repeat: bool = False
    nullable: bool = False  # None is a value (the clip's end, no cache folder, decided later)
    group: str | None = None
    kind: str = "value"  # value, words, pairs, items, per_item, switches
    paths: tuple[tuple[str, ...], ...] = ()  # the request fields it sets, e.g. (("selection", "max_frames"),)
    field_default: Any = None  # the field's own default (what {default} in the help shows)
    none_as: Any = None
    resolve: str | None = None
    words: tuple[str, ...] = ()  # switches: the word of each path
    item: type | None = None  # items / per_item: the item class
    item_field: str | None = None  # per_item: the item's field it sets
    within: tuple[str, ...] | None = None  # the optional config (e.g. ("attention_edit",)) it belongs to
    enables: bool = False  # a field without default of that optional config: giving it builds the config
    file: str | None = None  # the kind of file the option names ("image"), for forms' upload widgets
    range: str | None = None  # the accepted values as text, e.g. "[1, 1000]" (metadata "range")
    app: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the app's form hints (metadata "app")

    @property
    def flag(self) -> str:
        """How the command line spells it (its name for a positional)."""
        return self.flags[0] if self.flags else self.name

    def choice_values(self) -> tuple | None:
        """The allowed values now (a callable's registry is read at this moment)."""
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def help_text(self) -> str:
        """The help with {choices} and {default} filled in."""
        text = self.help
        if "{choices}" in text:
            choices = self.choice_values() if self.choices is not None else _item_choices(self)
            text = text.replace("{choices}", ", ".join(map(str, choices or ())))
        return text.replace("{default}", str(self.field_default))

    def choice_help(self) -> dict[str, str]:
        """Each choice's help when the choices come from a registry (editing.registries), else {}."""
        if self.choices is not None:
            return choice_help(self.choices)
        if self.item is not None:
            return choice_help(dataclasses.fields(self.item)[0].metadata.get("choices"))
        return {}


def _item_choices(option: Option) -> tuple | None:
    """The choices of an item class's key field (the KIND of --control)."""
    if option.item is None:
        return None
    key = dataclasses.fields(option.item)[0]
    choices = key.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _default_of(f: dataclasses.Field, instance: Any) -> Any:
    """A field's default: the enclosing default instance's value, else the field's own (MISSING if none)."""
    if instance is not None:
        return getattr(instance, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flags(meta: Mapping, name: str) -> tuple[str, ...]:
    flag = meta.get("flag", "--" + name.replace("_", "-"))
    return (flag,) if isinstance(flag, str) else tuple(flag)


def options(command: str) -> tuple[Option, ...]:
    """Every option of `command` ("edit" or "tune"), in the order of the request's fields."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    return tuple(_merge_switches(_walk(COMMANDS[command], (), None, None, None)))


def _walk(cls: type, path: tuple[str, ...], instance: Any, group: str | None, within: tuple[str, ...] | None) -> list[Option]:
    hints = typing.get_type_hints(cls)
    found: list[Option] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not f.init or meta.get("option") is False:
            continue
        hint, nullable = _unwrap(hints[f.name])
        default = _default_of(f, instance)
        here = path + (f.name,)
        if dataclasses.is_dataclass(hint):
            nested = default if isinstance(default, hint) else None
            inner_within = within if within is not None else (here if nullable else None)
            found += _walk(hint, here, nested, meta.get("group") or GROUPS.get(hint, group), inner_within)
        else:
            found += _field_options(cls, f, hint, nullable, default, _Place(here, group, within))
    return found


APP_HINTS = frozenset({"default", "min", "max", "step", "form", "api", "why"})


def _app_hint(cls: type, f: dataclasses.Field) -> Mapping[str, Any]:
    """A field's `app` metadata, checked: known keys only, and every difference says why."""
    hint = dict(f.metadata.get("app", {}))
    unknown = sorted(set(hint) - APP_HINTS)
    if unknown or (hint and not hint.get("why")):
        raise TypeError(f"{cls.__name__}.{f.name}: app hints take {', '.join(sorted(APP_HINTS))} with a 'why'; got {hint}")
    return hint


@dataclass(frozen=True)
class _Place:
    """Where a field sits in the schema walk: its path of field names, its option group, and the optional
    config it sits within (an option there turns that config on)."""

    path: tuple[str, ...]
    group: str | None = None
    within: tuple[str, ...] | None = None


def _field_options(cls: type, f: dataclasses.Field, hint: Any, nullable: bool, default: Any, place: _Place) -> list[Option]:
    """The option(s) one field gives (an item tuple also gives its items' KEY=VALUE options)."""
    path, group, within = place.path, place.group, place.within
    meta = f.metadata
    name = meta.get("dest", f.name)
    flags = () if meta.get("positional") else _flags(meta, name)
    missing = default is dataclasses.MISSING
    common = dict(
        name=name, flags=flags, help=meta.get("help", ""), choices=meta.get("choices"), metavar=meta.get("metavar"), group=group,
        paths=(path,), field_default=None if missing else default, within=within, enables=missing and within is not None,
        required=bool(meta.get("required")) or (missing and within is None), needed=missing and within is None,
        file=meta.get("file"), range=meta.get("range"), app=_app_hint(cls, f),
    )  # fmt: skip
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if hint in (str, int, float, bool):
        if "word" in meta:
            return [Option(**common, type=bool, default=default, kind="switch", words=(meta["word"],))]
        value = None if missing else default
        if "none_as" in meta and value is None:
            value = meta["none_as"]
        if meta.get("resolve"):
            value, nullable = None, True
        return [
            Option(
                **common,
                type=hint,
                default=value,
                nullable=nullable and "none_as" not in meta,
                none_as=meta.get("none_as"),
                resolve=meta.get("resolve"),
            )
        ]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        element = args[0]
        start = [] if missing else list(default)
        if element is str:
            return [Option(**common | {"metavar": common["metavar"] or "W1,W2"}, type=str, default=",".join(start), kind="words")]
        if typing.get_origin(element) is tuple and typing.get_args(element) == (str, float):
            pairs = [f"{word}={value:g}" for word, value in start]
            return [
                Option(
                    **common | {"metavar": common["metavar"] or "WORD=VALUE"}, type=str, default=pairs, repeat=True, kind="pairs"
                )
            ]
        if dataclasses.is_dataclass(element) and hasattr(element, "parse"):
            found = [Option(**common, type=str, default=[], repeat=True, kind="items", item=element)]
            key = dataclasses.fields(element)[0].name.upper()
            for sub in dataclasses.fields(element):
                if "flag" in sub.metadata:
                    sub_name = sub.metadata.get("dest", f"{name}_{sub.name}")  # control_model, control_video
                    found.append(
                        Option(
                            name=sub_name, flags=_flags(sub.metadata, sub_name),
                            type=str, default=[], help=sub.metadata.get("help", ""), metavar=sub.metadata.get("metavar") or f"{key}={sub.name.upper()}",
                            repeat=True, group=group, kind="per_item", paths=(path,), item=element, item_field=sub.name, within=within,
                            app=_app_hint(element, sub),
                        )
                    )  # fmt: skip
            return found
    raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {hint}; give it metadata option=False")


def _merge_switches(found: list[Option]) -> list[Option]:
    """Bool fields with a `word` sharing one name become one comma-separated option (`--smooth flow,color`)."""
    switches: dict[str, list[Option]] = {}
    merged: list[Option | str] = []
    for option in found:
        if option.kind != "switch":
            merged.append(option)
            continue
        if option.name not in switches:
            merged.append(option.name)
        switches.setdefault(option.name, []).append(option)
    return [option if isinstance(option, Option) else _switches(switches[option]) for option in merged]


def _switches(parts: list[Option]) -> Option:
    """One comma-separated option from the bool fields it switches on."""
    words = tuple(part.words[0] for part in parts)
    default = ",".join(part.words[0] for part in parts if part.default)
    text = ", ".join(f"{part.words[0]} ({part.help})" if part.help else part.words[0] for part in parts)
    return dataclasses.replace(
        parts[0], type=str, kind="switches", words=words, paths=tuple(part.paths[0] for part in parts), default=default,
        field_default=default, help=f"comma-separated, any of: {text}", metavar=parts[0].metavar or ",".join(words),
    )  # fmt: skip


# ---------------------------------------------------------------- option values


def defaults(command: str) -> dict[str, Any]:
    """Every option's default value (in option form), keyed by option name."""
    return {option.name: copy.copy(option.default) for option in options(command)}


def coerce(option: Option, value: Any) -> Any:
    """A loose value (YAML, a widget) in the option's form; ConfigError naming the option if it has none."""
    name = option.name
    if value is None:
        if option.nullable or option.default is None:
            return None
        raise ConfigError(f"{name} must be given, got nothing")
    if option.repeat:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, str) for item in values):
            raise ConfigError(f"{name} must be text or a list of texts, got {value!r}")
        return values
    if option.kind == "switches" and isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if option.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if option.type is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return value
    if option.type is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {value!r}")
    choices = option.choice_values()
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def complete(command: str, given: Mapping[str, Any], keep_none: bool = True) -> dict[str, Any]:
    """Every option's value: `given` (coerced, names checked) over the defaults; `keep_none=False` lets a
    None (a blank widget) keep the default."""
    known = {option.name: option for option in options(command)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {', '.join(known)}")
    values = defaults(command)
    for name, value in given.items():
        if value is None and not keep_none:
            continue
        values[name] = coerce(known[name], value)
    return values


def edit_request(values: Mapping[str, Any] | Any) -> EditRequest:
    """The EditRequest these option values describe (a dict or an argparse Namespace; missing options keep their
    defaults). A `preset` fills in its values for every option not given explicitly (editing.presets)."""
    return build_request("edit", values)


def tune_request(values: Mapping[str, Any] | Any) -> TuneRequest:
    """The TuneRequest these option values describe."""
    return build_request("tune", values)


def build_request(command: str, values: Mapping[str, Any] | Any):
    """`command`'s request from option values: each option converted to its fields, the configs built and validated."""
    given = values if isinstance(values, Mapping) else vars(values)
    if command == "edit" and given.get("preset"):
        given = apply_preset(given, defaults("edit"))
    schema = options(command)
    # every given value in its option's form, or one sentence naming the option (an API client may send anything)
    values = defaults(command) | {
        o.name: given[o.name] if given[o.name] is None else coerce(o, given[o.name]) for o in schema if o.name in given
    }
    for option in schema:
        if option.needed and values[option.name] is None:
            raise ConfigError(f"{option.name} is required")
    assigned: dict[tuple[str, ...], Any] = {}
    per_item: dict[tuple[str, ...], list[tuple[Option, dict[str, str]]]] = {}
    for option in schema:
        value = values[option.name]
        if option.kind == "per_item":
            per_item.setdefault(option.paths[0], []).append((option, _key_values(value, option)))
            continue
        for path, converted in zip(option.paths, _field_values(option, value, values)):
            assigned[path] = converted
    for path, parts in per_item.items():
        assigned[path] = _attach(assigned[path], parts, next(o for o in schema if o.kind == "items" and o.paths[0] == path))
    _drop_unset_optional(schema, values, assigned)
    return _construct(COMMANDS[command], (), assigned, None)


def _field_values(option: Option, value: Any, values: Mapping[str, Any]) -> list[Any]:
    """The field value(s) one option's value stands for."""
    if option.kind == "value":
        if value is None and option.resolve:
            value = RESOLVERS[option.resolve](values, option)
        elif option.none_as is not None and value == option.none_as:
            value = None
        return [value]
    if option.kind == "words":
        return [tuple(word.strip() for word in (value or "").split(",") if word.strip())]
    if option.kind == "pairs":
        return [tuple(_pair(text, option) for text in value)]
    if option.kind == "items":
        return [tuple(option.item.parse(text) for text in value)]
    if option.kind == "switches":
        on = _switch_words(value, option)
        return [word in on for word in option.words]
    raise AssertionError(option.kind)


def _pair(text: str, option: Option) -> tuple[str, float]:
    word, sep, number = text.rpartition("=")
    example = f"{option.flag} red=2"
    try:
        pair = (word.strip(), float(number))
    except ValueError:
        raise ConfigError(f"{option.flag} takes {option.metavar}, e.g. {example}; got {text!r}") from None
    if not sep or not word.strip():
        raise ConfigError(f"{option.flag} takes {option.metavar}, e.g. {example}; got {text!r}")
    return pair


def _key_values(texts: list[str], option: Option) -> dict[str, str]:
    """Repeated KEY=VALUE texts as a dict."""
    pairs = {}
    for text in texts:
        key, sep, rest = text.partition("=")
        if not sep or not rest:
            raise ConfigError(f"{option.flag} takes {option.metavar}, e.g. {option.flag} depth=/path; got {text!r}")
        pairs[key.strip()] = rest.strip()
    return pairs


def _attach(items: tuple, parts: list[tuple[Option, dict[str, str]]], owner: Option) -> tuple:
    """Items with their KEY=VALUE options applied (`--control-model depth=...` sets the depth control's model)."""
    key = dataclasses.fields(owner.item)[0].name
    keys = {getattr(item, key) for item in items}
    for _option, pairs in parts:
        for name in pairs.keys() - keys:
            raise ConfigError(f"{'/'.join(o.flag for o, _ in parts)} name {name!r}, which no {owner.flag} asks for")
    return tuple(
        dataclasses.replace(item, **{o.item_field: pairs.get(getattr(item, key)) for o, pairs in parts}) for item in items
    )


def _switch_words(text: Any, option: Option) -> set[str]:
    """The words a comma-separated switches option lists ('' or 'none': none)."""
    if not isinstance(text, str):
        raise ConfigError(f"{option.name} must be text such as {','.join(option.words)!r}, got {text!r}")
    words = {word.strip().lower() for word in text.split(",")} - {""}
    unknown = sorted(words - {*option.words, "none"})
    if unknown:
        raise ConfigError(
            f"unknown {option.flag} value {unknown[0]!r} in {text!r}: use {', '.join(option.words)}, {','.join(option.words)!r} or none"
        )
    if "none" in words and len(words) > 1:
        raise ConfigError(f"{option.flag} {text!r} combines 'none' with other choices")
    return words


def _drop_unset_optional(schema: tuple[Option, ...], values: Mapping[str, Any], assigned: dict) -> None:
    """An optional config (`attention_edit`) whose enabling options are left out is None; its other options then need them."""
    for root in dict.fromkeys(o.within for o in schema if o.within is not None):
        members = [o for o in schema if o.within == root]
        enabling = [o for o in members if o.enables]
        if all(values[o.name] is not None for o in enabling):
            continue
        changed = [o.flag for o in members if not o.enables and values[o.name] != o.default]
        if changed:
            needed = " and ".join(o.flag for o in enabling)
            listed = ", ".join(changed[:-1]) + (" and " if len(changed) > 1 else "") + changed[-1]
            raise ConfigError(f"{listed} need{'s' if len(changed) == 1 else ''} {needed}")
        for path in [p for p in assigned if p[: len(root)] == root]:
            del assigned[path]
        assigned[root] = None


def _construct(cls: type, prefix: tuple[str, ...], assigned: dict, instance: Any):
    """`cls` built from the assigned field values under `prefix` (nested configs recursively)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        if path in assigned:
            kwargs[f.name] = assigned[path]
            continue
        hint, _ = _unwrap(hints[f.name])
        if f.init and dataclasses.is_dataclass(hint) and any(p[: len(path)] == path for p in assigned):
            default = _default_of(f, instance)
            kwargs[f.name] = _construct(hint, path, assigned, default if isinstance(default, hint) else None)
    return dataclasses.replace(instance, **kwargs) if instance is not None else cls(**kwargs)


# ---------------------------------------------------------------- values decided when the request is built


def output_size(values: Mapping[str, Any] | Any) -> int:
    """--size, or the size the model was trained at (a model drawn far from its size draws badly and slowly)."""
    values = values if isinstance(values, Mapping) else vars(values)
    return values["size"] if values.get("size") is not None else native_size(values.get("model"))


def _native_size(values: Mapping[str, Any], option: Option) -> int:
    return output_size(values)


def _tuned_or_default(values: Mapping[str, Any], option: Option) -> Any:
    """The attention mode a --tuned file was tuned with; without one, the field's default."""
    if values.get("tuned") is not None:
        return tuned_attention(values["tuned"])
    return option.field_default


def _default_keyframes(values: Mapping[str, Any], option: Option) -> Any:
    return default_keyframes(values)


RESOLVERS: dict[str, Callable[[Mapping[str, Any], Option], Any]] = {
    "native_size": _native_size,
    "tuned_attention": _tuned_or_default,
    "default_keyframes": _default_keyframes,
}


def field_default(cls: type, name: str) -> Any:
    """A dataclass field's default."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


DEFAULT_ATTENTION = field_default(EngineConfig, "attention")  # cross-frame attention of an edit without --attention or --tuned


# ---------------------------------------------------------------- argparse


def add_arguments(parser: argparse.ArgumentParser, command: str, suppress_defaults: bool = False) -> None:
    """`command`'s options as arguments of an argparse parser (choices read now); with `suppress_defaults`
    an option left out is absent from the parsed namespace (see `explicit_options`)."""
    groups: dict[str, Any] = {}
    for option in options(command):
        target = (
            parser
            if option.group is None
            else groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        )
        described = " | ".join(f"{name}: {help}" if help else name for name, help in option.choice_help().items())
        text = (
            option.help_text() + (f" (accepts {option.range})" if option.range else "") + (f" [{described}]" if described else "")
        )
        text = text.replace("%", "%%") or None
        if not option.flags:
            target.add_argument(option.name, help=text)
            continue
        kwargs: dict[str, Any] = {"dest": option.name, "help": text}
        if option.type is bool and not option.repeat:
            flags = option.flags if not option.default else tuple("--no-" + f.removeprefix("--") for f in option.flags)
            kwargs |= {"default": argparse.SUPPRESS} if suppress_defaults else {}
            target.add_argument(*flags, action="store_false" if option.default else "store_true", **kwargs)
            continue
        if option.repeat:
            kwargs |= {"action": "append", "default": [], "metavar": option.metavar}
        else:
            kwargs |= {
                "type": option.type,
                "default": option.default,
                "choices": option.choice_values(),
                "metavar": option.metavar,
            }
        if option.required:
            kwargs["required"] = True
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        target.add_argument(*option.flags, **kwargs)


def explicit_options(command: str, arguments: Sequence[str]) -> set[str]:
    """The option names a command line sets explicitly, from `command`'s own arguments (after the command word)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, command, suppress_defaults=True)
    return set(vars(parser.parse_known_args(list(arguments))[0]))
