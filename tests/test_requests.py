"""The one option schema (editing.requests): the CLI, eval specs and the app's forms all derive from the configs."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from dataclasses import field

import pytest

from editing import requests
from editing.cli import build_parser, main
from editing.config import (
    DEFAULT_KEYFRAMES,
    AttentionEditConfig,
    ControlSpec,
    EditConfig,
    EngineConfig,
    FrameSelection,
    KeyframeImage,
)
from editing.errors import ConfigError
from editing.evaluate import parse_spec
from editing.lora import LoraSpec, ModelOptions
from editing.masks.options import MaskConfig
from editing.models import native_size
from editing.requests import EditRequest, TuneConfig, TuneRequest

from .conftest import ROOT

VIDEO = str(ROOT / "assets" / "car-turn.mp4")
EDIT = ["edit", VIDEO, "--prompt", "a cat", "--out", "o.mp4"]
TUNE = ["tune", VIDEO, "--prompt", "a car", "--out", "t.safetensors"]


def parsed(argv: list[str]):
    args = build_parser().parse_args(argv)
    return requests.build_request(args.command, args)


def edit(**parts) -> EditRequest:
    """An EditRequest built by hand from the dataclasses (the default model, so size 512; keyframes then
    propagation, the edit command's default where the edit allows it)."""
    parts.setdefault("engine", EngineConfig(keyframes=DEFAULT_KEYFRAMES))
    return EditRequest(VIDEO, "o.mp4", parts.pop("edit", EditConfig("a cat")), **parts)


SIZE = native_size(requests.field_default(EditRequest, "model"))
HAND_BUILT_EDITS = [
    ([], edit()),
    (
        ["--negative-prompt", "blur", "--steps", "3", "--guidance", "5", "--strength", "0.7", "--seed", "4"],
        edit(edit=EditConfig("a cat", "blur", 3, 5.0, 0.7, 4)),
    ),
    (
        ["--start", "0.5", "--end", "2", "--stride", "2", "--frames", "0", "--size", "128"],
        edit(selection=FrameSelection(0.5, 2.0, 2, None, 128)),
    ),
    (["--frames", "6"], edit(selection=FrameSelection(max_frames=6, size=SIZE))),
    (["--model", "tiny"], edit(model="tiny", selection=FrameSelection(size=native_size("tiny")))),
    (
        ["--attention", "window", "--window", "1", "--chunk", "4"],
        edit(engine=EngineConfig(attention="window", window=1, chunk=4, keyframes=DEFAULT_KEYFRAMES)),
    ),
    (
        ["--lora", "a/b:0.5", "--lora", "x.safetensors", "--lora-fuse", "--vae", "tiny"],
        edit(model_options=ModelOptions((LoraSpec("a/b", 0.5), LoraSpec("x.safetensors")), True, "tiny")),
    ),
    (
        ["--preset", "fast", "--model", "tiny", "--steps", "6"],  # the preset's values for every option not given
        edit(
            edit=EditConfig("a cat", steps=6, guidance=1.0, strength=0.5, sampler="lcm"),
            engine=EngineConfig(inversion="none", attention="first", feature_bank=4, keyframe_refine=0.0),
            model="tiny",
            selection=FrameSelection(size=native_size("tiny")),
            model_options=ModelOptions((LoraSpec("random", 1.0),), True, "tiny"),
            preset="fast",
        ),
    ),
    (
        ["--sampler", "euler", "--token-merge", "0.5", "--feature-bank", "4"],
        edit(edit=EditConfig("a cat", sampler="euler"), engine=EngineConfig(token_merge=0.5, feature_bank=4)),
    ),
    (
        [
            "--keyframes",
            "auto",
            "--keyframe-refine",
            "0.2",
            "--keyframe-image",
            "0=a.png",
            "--keyframe-image",
            "8=b.png",
            "--keyframe-fit",
            "crop",
            "--keyframe-guidance",
            "2",
        ],
        edit(
            engine=EngineConfig(
                keyframes="auto",
                keyframe_refine=0.2,
                keyframe_images=(KeyframeImage(0, "a.png"), KeyframeImage(8, "b.png")),
                keyframe_fit="crop",
                keyframe_guidance=2.0,
            )
        ),
    ),
    (
        ["--inversion", "none", "--inversion-prompt", "a car"],
        edit(engine=EngineConfig(inversion="none", inversion_prompt="a car", keyframes=DEFAULT_KEYFRAMES)),
    ),
    (
        [
            "--control",
            "canny:0.5",
            "--control",
            "depth:1:0:0.5",
            "--control-model",
            "depth=some/net",
            "--control-video",
            "canny=c.mp4",
        ],
        edit(
            engine=EngineConfig(
                controls=(ControlSpec("canny", 0.5, video="c.mp4"), ControlSpec("depth", 1.0, 0.0, 0.5, model="some/net"))
            )
        ),
    ),
    (["--smooth", "flow,color"], edit(engine=EngineConfig(smooth_flow=True, smooth_color=True, keyframes=DEFAULT_KEYFRAMES))),
    (["--smooth", "color"], edit(engine=EngineConfig(smooth_color=True, keyframes=DEFAULT_KEYFRAMES))),
    (["--smooth", "none"], edit()),
    (["--keyframes", "off"], edit(engine=EngineConfig(keyframes="off"))),  # every frame edited
    (["--attention", "none"], edit(engine=EngineConfig(attention="none"))),  # per frame: no keyframes by default
    (["--attention", "tokenflow"], edit(engine=EngineConfig(attention="tokenflow"))),  # TokenFlow propagates keyframes itself
    (
        ["--cache-dir", "/tmp/c", "--annotators", "a/b"],
        edit(engine=EngineConfig(cache_dir="/tmp/c", annotators="a/b", keyframes=DEFAULT_KEYFRAMES)),
    ),
    (
        ["--reference-image", "dog.png:0.3", "--reference-adapter", "random"],
        edit(engine=EngineConfig(reference_image="dog.png:0.3", reference_adapter="random", keyframes=DEFAULT_KEYFRAMES)),
    ),
    (["--device", "cpu", "--dtype", "fp32"], edit(device="cpu", dtype="fp32")),
    (
        ["--tuned", "w.safetensors", "--attention", "sparse-causal"],
        edit(tuned="w.safetensors", engine=EngineConfig(attention="sparse-causal")),
    ),
    (["--source-prompt", "a car"], edit(engine=EngineConfig(), attention_edit=AttentionEditConfig("a car"))),
    (
        [
            "--source-prompt",
            "a car",
            "--edit",
            "swap",
            "--cross-replace",
            "0.5",
            "--self-replace",
            "0.2",
            "--blend-words",
            "car, cat",
            "--blend-threshold",
            "0.4",
        ],
        edit(engine=EngineConfig(), attention_edit=AttentionEditConfig("a car", "swap", 0.5, 0.2, ("car", "cat"), 0.4)),
    ),
    (
        ["--source-prompt", "a car", "--edit", "reweight", "--reweight", "cat=2", "--reweight", "a=-1.5"],
        edit(
            engine=EngineConfig(), attention_edit=AttentionEditConfig("a car", "reweight", reweight=(("cat", 2.0), ("a", -1.5)))
        ),
    ),
    (
        ["--source-prompt", "a car", "--null-text", "--null-text-iterations", "3"],
        edit(engine=EngineConfig(), attention_edit=AttentionEditConfig("a car", null_text=True, null_text_iterations=3)),
    ),
    (
        [
            "--mask",
            "m.png@3",
            "--mask-track",
            "sam2",
            "--mask-model",
            "a/sam",
            "--mask-grow",
            "2",
            "--mask-feather",
            "3",
            "--region",
            "--mask-preview",
            "p.mp4",
        ],
        edit(
            masking=MaskConfig(
                mask="m.png@3",
                mask_track="sam2",
                mask_model="a/sam",
                mask_grow=2,
                mask_feather=3,
                mask_preview="p.mp4",
                region=True,
            )
        ),
    ),
    (
        ["--mask-words", "red star", "--remove", "--inpaint-model", "a/inpaint"],
        edit(masking=MaskConfig(mask_words="red star", remove=True, inpaint_model="a/inpaint")),
    ),
    (
        [
            "--model",
            "tiny",
            "--motion-adapter",
            "random",
            "--context",
            "8:2:static",
        ],  # a motion module turns the default keyframes off
        edit(
            engine=EngineConfig(context="8:2:static", keyframes=None),
            model="tiny",
            selection=FrameSelection(size=native_size("tiny")),
            model_options=ModelOptions(motion_adapter="random"),
        ),
    ),
    (
        ["--step-cache", "deepcache:3", "--compile"],
        edit(
            engine=EngineConfig(step_cache="deepcache:3", keyframes=DEFAULT_KEYFRAMES), model_options=ModelOptions(compile=True)
        ),
    ),
]
HAND_BUILT_TUNES = [
    ([], TuneRequest(VIDEO, TuneConfig("a car", FrameSelection(max_frames=8, size=SIZE)), "t.safetensors")),
    (
        [
            "--model",
            "tiny",
            "--steps",
            "5",
            "--learning-rate",
            "0.001",
            "--seed",
            "2",
            "--start",
            "0.2",
            "--end",
            "1",
            "--stride",
            "2",
            "--frames",
            "4",
            "--size",
            "64",
        ]
        + [
            "--gradient-checkpointing",
            "--mixed-precision",
            "bf16",
            "--cache-dir",
            "/tmp/t",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
        ],
        TuneRequest(
            VIDEO,
            TuneConfig(
                "a car", FrameSelection(0.2, 1.0, 2, 4, 64), 5, 0.001, 2, gradient_checkpointing=True, mixed_precision="bf16"
            ),
            "t.safetensors",
            "tiny",
            "cpu",
            "fp32",
            "/tmp/t",
        ),
    ),
]


@pytest.mark.parametrize(("flags", "expected"), HAND_BUILT_EDITS)
def test_every_edit_flag_parses_to_the_request_built_by_hand(flags, expected):
    assert parsed(EDIT + flags) == expected


@pytest.mark.parametrize(("flags", "expected"), HAND_BUILT_TUNES)
def test_every_tune_flag_parses_to_the_request_built_by_hand(flags, expected):
    assert parsed(TUNE + flags) == expected


@pytest.mark.parametrize(("command", "cases"), [("edit", HAND_BUILT_EDITS), ("tune", HAND_BUILT_TUNES)])
def test_the_hand_built_cases_use_every_flag(command, cases):
    """So the two tests above check every option of the schema, not a sample."""
    used = {token for flags, _ in cases for token in flags if token.startswith("--")} | {"--prompt", "--out"}
    declared = {option.flag for option in requests.options(command) if option.flags}
    assert declared == used


def _at(request, path):
    return functools.reduce(getattr, path, request)


@pytest.mark.parametrize("command", ["edit", "tune"])
def test_option_defaults_are_the_dataclass_defaults(command):
    """The parser's default of every plain option is the field's default in the request built by hand with no options."""
    base = parsed(EDIT if command == "edit" else TUNE)
    hand = HAND_BUILT_EDITS[0][1] if command == "edit" else HAND_BUILT_TUNES[0][1]
    assert base == hand
    args = vars(build_parser().parse_args(EDIT if command == "edit" else TUNE))
    checked = 0
    enabled = edit(
        engine=EngineConfig(), attention_edit=AttentionEditConfig("a car")
    )  # the optional config's defaults, once it is asked for
    for option in requests.options(command):
        if option.kind == "value" and not option.resolve and not option.needed and not option.enables and option.none_as is None:
            assert args[option.name] == _at(enabled if option.within else hand, option.paths[0]), option.name
            checked += 1
    assert checked >= (10 if command == "edit" else 6)


def test_no_literal_defaults_in_the_cli_module():
    """cli.py states no option default of its own: the values of the configs appear nowhere in it."""
    source = (ROOT / "editing" / "cli.py").read_text()
    assert "default=" not in source.replace("default=None", "")
    for literal in ("7.5", "0.8", "lllyasviel", '"ddim"', '"refine"', "3e-5"):
        assert literal not in source


# ---------------------------------------------------------------- a field added to a config


REGISTRY = ["plain", "crisp"]


def _with_new_fields(monkeypatch):
    """The edit command's request with two fields added to its EngineConfig, as a contributor would add them."""
    extra = [
        (
            "sharpness",
            float,
            field(default=0.25, metadata={"help": "how sharp the edit is", "flag": ("--sharpness", "--crispness")}),
        ),
        ("look", str, field(default="plain", metadata={"help": "a look: {choices}", "choices": lambda: tuple(REGISTRY)})),
    ]
    engine = dataclasses.make_dataclass("EngineConfigPlus", extra, bases=(EngineConfig,), frozen=True)
    request = dataclasses.make_dataclass(
        "EditRequestPlus", [("engine", engine, field(default=engine()))], bases=(EditRequest,), frozen=True
    )
    monkeypatch.setitem(requests.COMMANDS, "edit", request)
    return request


def test_a_field_added_to_a_config_is_a_cli_option(monkeypatch, capsys):
    _with_new_fields(monkeypatch)
    assert parsed(EDIT).engine.sharpness == 0.25 and parsed(EDIT).engine.look == "plain"  # the dataclass defaults
    request = parsed(EDIT + ["--sharpness", "0.5", "--look", "crisp", "--steps", "3"])
    assert (request.engine.sharpness, request.engine.look, request.edit.steps) == (0.5, "crisp", 3)
    assert parsed(EDIT + ["--crispness", "0.75"]).engine.sharpness == 0.75  # a second spelling is an alias
    with pytest.raises(SystemExit):
        build_parser().parse_args(EDIT + ["--look", "wavy"])
    REGISTRY.append("wavy")  # choices given as a callable are read when the parser is built
    try:
        assert parsed(EDIT + ["--look", "wavy"]).engine.look == "wavy"
        with pytest.raises(SystemExit):
            build_parser().parse_args(["edit", "--help"])
        assert "--sharpness SHARPNESS" in capsys.readouterr().out
    finally:
        REGISTRY.remove("wavy")


def test_a_field_added_to_a_config_is_an_eval_spec_setting(monkeypatch):
    _with_new_fields(monkeypatch)
    data = {
        "clip": "none",
        "defaults": {"model": "tiny", "sharpness": 0.75},
        "edits": [{"video": "assets/car-turn.mp4", "prompt": "a cat"}],
    }
    assert parse_spec(data, ROOT).edits[0].request.engine.sharpness == 0.75
    data["edits"][0]["sharpness"] = "very"
    with pytest.raises(ConfigError, match="sharpness must be a number"):
        parse_spec(data, ROOT)
    data["edits"][0] |= {"sharpness": 0.5, "look": "wavy"}
    with pytest.raises(ConfigError, match="look must be one of plain, crisp; got 'wavy'"):
        parse_spec(data, ROOT)


def test_a_field_added_to_a_config_is_an_app_form_field_and_api_parameter(monkeypatch, tmp_path):
    from ui import build_demo
    from ui.edit_tab import request_from
    from ui.forms import default_values

    _with_new_fields(monkeypatch)
    assert default_values()["sharpness"] == 0.25
    request = request_from({"video": VIDEO, "prompt": "a cat", "model": "tiny", "sharpness": 0.6}, str(tmp_path), (".mp4",))
    assert request.engine.sharpness == 0.6
    parameters = {
        p["parameter_name"]: p for p in build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    }
    assert parameters["sharpness"]["parameter_default"] == 0.25 and "look" in parameters


def test_without_the_added_field_none_of_it_appears():
    """The control: the same names are not options of the unmodified schema (so the tests above can fail)."""
    assert not {"sharpness", "look"} & set(requests.defaults("edit"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(EDIT + ["--sharpness", "0.5"])


# ---------------------------------------------------------------- values from specs and forms


def test_loose_values_are_checked_with_one_sentence_naming_the_option():
    steps = next(o for o in requests.options("edit") if o.name == "steps")
    assert requests.coerce(steps, 6.0) == 6 and requests.coerce(steps, "6") == 6
    for bad, message in (
        (2.5, "steps must be a whole number"),
        (True, "steps must be a whole number"),
        (None, "steps must be given"),
    ):
        with pytest.raises(ConfigError, match=message):
            requests.coerce(steps, bad)
    with pytest.raises(ConfigError, match="unknown option colour"):
        requests.complete("edit", {"colour": "red"})
    with pytest.raises(ConfigError, match="prompt is required"):
        requests.edit_request({"video": VIDEO, "out": "o.mp4"})


def test_option_errors_of_the_compound_flags():
    cases = [
        (["--blend-words", "jeep"], "--blend-words needs --source-prompt"),
        (["--control-video", "pose=a.mp4"], "no --control asks for"),
        (["--control", "canny", "--control-model", "canny"], "--control-model takes KIND=SPEC"),
        (["--source-prompt", "a", "--edit", "reweight", "--reweight", "silver"], "--reweight takes WORD=VALUE"),
        (["--smooth", "wobble"], "unknown --smooth value 'wobble'"),
        (["--smooth", "none,flow"], "combines 'none'"),
    ]
    for flags, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parsed(EDIT + flags)


def test_the_tuned_files_attention_is_the_default(tmp_path, tiny):
    from editing.tuned_file import FORMAT
    from editing.tuning import inflate, save_tuned

    path = tmp_path / "t.safetensors"
    save_tuned(path, inflate(tiny, 0), {"format": FORMAT, "base": "x", "base_name": "tiny", "settings": {"attention": "full"}})
    assert parsed(EDIT + ["--model", "tiny", "--tuned", str(path)]).engine.attention == "full"
    assert parsed(EDIT + ["--model", "tiny", "--tuned", str(path), "--attention", "window"]).engine.attention == "window"
    assert parsed(EDIT).engine.attention == requests.DEFAULT_ATTENTION == requests.field_default(EngineConfig, "attention")


# ---------------------------------------------------------------- imports


def _imported(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


DEV = re.compile(r"(^|\.)(shapes|shapes_world|evaluate|train\w*|judge|benchmark)(\.|$)")


def test_help_and_build_parser_import_no_benchmark_judge_training_or_evaluation():
    for args in (
        ["-m", "editing", "--help"],
        ["-m", "editing", "edit", "--help"],
        ["-c", "from editing.cli import build_parser; build_parser()"],
    ):
        modules = _imported(*args)
        assert "editing.cli" in modules and "editing.requests" in modules
        assert not [m for m in modules if DEV.search(m)], args
    # the control: asking for the shapes benchmark does import it (so the check above sees such imports)
    assert "shapes_world.benchmark" in _imported("-m", "editing", "eval", "--shapes", "--help")


def test_eval_shapes_reads_its_options_in_any_order(tmp_path, capsys):
    assert main(["eval", "--settings", "nope", "--out", str(tmp_path), "--shapes"]) == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err


def _import_graph(packages=("editing", "ui")) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports anywhere in its source (function-level imports too)."""
    import ast

    files = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in files.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                target = (
                    ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level
                    else node.module
                )
                submodules = {f"{target}.{alias.name}" for alias in node.names}
                found |= submodules & files.keys()
                if not submodules <= files.keys():  # names from the module itself, not only its submodules
                    found.add(target)
        graph[module] = {m for m in found if m in files and m != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circle_inside_editing_or_ui():
    graph = _import_graph()
    assert {"editing.cli", "editing.requests", "editing.evaluate", "ui.forms"} <= graph.keys()
    assert "editing.requests" in graph["editing.cli"] and "editing.requests" in graph["ui.forms"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # the control: the circle this schema removed (cli -> evaluate -> shapes.benchmark -> cli) is found
    old = graph | {"editing.evaluate": graph["editing.evaluate"] | {"editing.cli"}}
    assert _cycle(old) is not None
