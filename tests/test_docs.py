"""The README and the docs site: the README's first lines are the two commands and its client example
matches the app's API; the docs' option reference and registry lists are generated from the code (an
option or entry added in a test appears there); the schema's ranges agree with validation; `--help`
shows registered choices with their help; benchmark pages are written from saved result files."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import field

import pytest

from .conftest import ROOT

README_COMMANDS = (
    "bash scripts/install.sh && .venv/bin/python app.py",
    "bash scripts/install.sh && .venv/bin/python -m pytest",
)


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_opens_with_the_two_commands_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("```bash\n" + "\n".join(README_COMMANDS) + "\n")
    assert len(readme.splitlines()) <= 200
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(README_COMMANDS[1])  # CI runs the README's test command


def test_the_readme_client_example_matches_the_api():
    import ast

    from ui import build_demo

    readme = (ROOT / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "gradio_client" in block)
    call = next(n for n in ast.walk(ast.parse(example)) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "predict")
    keywords = {k.arg: k.value for k in call.keywords}
    api_name = ast.literal_eval(keywords.pop("api_name"))
    endpoint = build_demo(default_model="tiny").get_api_info()["named_endpoints"][api_name]
    assert set(keywords) <= {p["parameter_name"] for p in endpoint["parameters"]}
    targets = next(
        n for n in ast.walk(ast.parse(example)) if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple)
    ).targets[0]
    assert len(targets.elts) == len(endpoint["returns"])


def test_the_readme_links_only_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_an_option_added_to_the_schema_appears_in_the_reference(hooks, monkeypatch):
    from editing import requests

    probe = dataclasses.make_dataclass(
        "ProbeRequest",
        [("docs_probe", int, field(default=3, metadata={"help": "a probe option added by the test", "range": "[1, 9]"}))],
        bases=(requests.EditRequest,),
        frozen=True,
    )
    monkeypatch.setitem(requests.COMMANDS, "edit", probe)
    page = hooks.option_reference()
    row = next(line for line in page.splitlines() if "`--docs-probe`" in line)
    assert "a probe option added by the test" in row and "[1, 9]" in row and "`3`" in row and "integer" in row
    for option in requests.options("edit"):  # and every other option has its row
        assert f"`{option.flag}`" in page, option.name


def test_a_registered_entry_appears_in_the_registry_page_and_in_help(hooks):
    from editing.cli import build_parser
    from editing.samplers import SAMPLERS, Sampler, register_sampler

    register_sampler(Sampler("docs-probe", "DDIMScheduler", help="a sampler registered by the test"))
    try:
        assert "| `docs-probe` | a sampler registered by the test |" in hooks.registries_page()
        edit = build_parser()._subparsers._group_actions[0].choices["edit"]
        text = "".join(edit.format_help().split())  # argparse wraps lines (and breaks at hyphens)
        assert "docs-probe:asamplerregisteredbythetest" in text
        assert "first:everyframeattendstothefirst(Text2Video-Zero)" in text  # the attention modes' help too
    finally:
        SAMPLERS.pop("docs-probe")


def _bounds(text: str):
    """(low, low inclusive, high, high inclusive) of a range like "[1, 1000]" or "(0, 1]"."""
    found = re.match(r"([\[(])\s*([-\d.]+),\s*([-\d.]+|inf)([\])])", text)
    assert found, text
    high = float("inf") if found[3] == "inf" else float(found[3])
    return float(found[2]), found[1] == "[", high, found[4] == "]"


def test_the_ranges_the_reference_shows_are_the_ones_validation_enforces():
    from editing.errors import ConfigError
    from editing.requests import edit_request, options

    base = {"video": str(ROOT / "assets" / "shapes-clip3.mp4"), "out": "out.mp4", "prompt": "a square", "model": "tiny"}
    ranged = [o for o in options("edit") if o.range]
    assert len(ranged) >= 10
    for option in ranged:
        values = dict(base)
        if option.within:  # an option of an optional config needs the field that enables it
            values["source_prompt"] = "a square"
        low, low_in, high, high_in = _bounds(option.range)
        step = 1 if option.type is int else 1e-3
        inside = [low if low_in else low + step] + ([high if high_in else high - step] if high != float("inf") else [])
        if option.name == "size":
            inside = [64, 2048]
        for value in inside:
            edit_request(values | {option.name: option.type(value)})
        outside = [low - step if low_in else low] + ([high + step if high_in else high] if high != float("inf") else [])
        if option.name == "frames":
            outside = [1]
        for value in outside:
            with pytest.raises(ConfigError):
                edit_request(values | {option.name: option.type(value)})


def test_the_benchmark_page_is_written_from_a_result_file_with_its_command_and_plots(hooks, tmp_path):
    import json

    rows = [
        {
            "setting": s,
            "clip": c,
            "kind": "colour",
            "edit_accuracy": 0.5 + c / 10,
            "warp_error": 3.0 + c,
            "warp_errors": [2.0 + c, 4.0 + c, None],
        }
        for s in ("first", "first-keyframes-8")
        for c in (0, 1)
    ]
    measured = {
        "edit_accuracy": 0.55,
        "structure_iou": 0.7,
        "warp_error": 3.5,
        "flicker": 1.0,
        "edit_accuracy_interval": [0.5, 0.6],
    }
    summary = {s: measured | {"seconds_per_frame": t} for s, t in (("first", 0.5), ("first-keyframes-8", 0.2))}
    document = {"command": "python -m editing eval --shapes --clips 2 --out DIR", "date": "2026-12-07", "commit": "abc1234"}
    document |= {"model": "shapes", "clips": [0, 1], "steps": 10, "minutes": 1.5, "summary": summary, "rows": rows, "notes": []}
    (tmp_path / "shapes-2026-12-07-probe.json").write_text(json.dumps(document))
    page, images = hooks.shapes_page(hooks.shapes_results(tmp_path))
    assert "`python -m editing eval --shapes --clips 2 --out DIR`" in page and "2026-12-07" in page and "abc1234" in page
    assert "| first-keyframes-8 | 0.55 [0.5, 0.6] | 0.7 | 3.5 | 1 | 0.2 |" in page
    assert set(images) == {"shapes-2026-12-07-probe-quality-cost.png", "shapes-2026-12-07-probe-warp-pairs.png"}
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    assert hooks._pair_means(document)["first"] == [2.5, 4.5, pytest.approx(float("nan"), nan_ok=True)]


def test_the_speed_page_is_written_from_a_result_file(hooks, tmp_path):
    import json

    rows = [
        {"setting": name, "s/frame": t, "UNet evals/frame": e, "VAE share": 0.1, "keyframes": k}
        for name, t, e, k in (("every-frame", 2.0, 30.0, "-"), ("keyframes-8", 0.8, 5.75, 2))
    ]
    document = {"command": "python benchmarks/speed.py --frames 16 --json x.json", "date": "2026-12-07", "commit": "abc1234"}
    document |= {"model": "sd15-random", "device": "2 CPU threads", "dtype": "fp32", "frames": 16, "steps": 10, "rows": rows}
    (tmp_path / "speed-2026-12-07-probe.json").write_text(json.dumps(document))
    page, images = hooks.speed_page(hooks.speed_results(tmp_path))
    assert "`python benchmarks/speed.py --frames 16 --json x.json`" in page and "abc1234" in page
    assert "| keyframes-8 | 0.800 | 5.75 | 10% | 2 |" in page
    assert list(images) == ["speed-2026-12-07-probe-cost.png"] and images["speed-2026-12-07-probe-cost.png"].startswith(
        b"\x89PNG"
    )
