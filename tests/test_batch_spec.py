"""Batch specs: a YAML alias bomb is refused unexpanded, a clip that does not exist fails its row only
(eval still refuses the spec), and the list of known settings names each setting once."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import yaml

from editing.cli import main
from editing.errors import ConfigError
from editing.evaluate import load_spec

from .conftest import ASSETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEFAULTS = {"model": "tiny", "device": "cpu", "size": 64, "frames": 2, "steps": 2, "stride": 4, "keyframes": "off"}


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" document: each level a list of nine aliases of the level below (9**levels leaves)."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nedits: *a{levels}\n"


def test_a_yaml_alias_bomb_is_refused_in_one_sentence_without_expanding_it(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(), encoding="utf-8")
    assert len(bomb.read_bytes()) < 700  # the reported bomb was 628 bytes
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as refused:
            load_spec(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value).startswith("spec bomb.yaml uses a YAML alias (*a0) at line 2: aliases are refused")
    assert peak < 5 * 2**20, f"{peak} bytes"
    assert main(["batch", str(bomb), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: spec bomb.yaml uses a YAML alias") and "\n" not in err


def test_any_alias_is_refused_and_an_anchor_alone_is_not(tmp_path):
    car = str(ASSETS / "car-turn.mp4")
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"defaults: &d {json.dumps(DEFAULTS)}\nedits:\n  - {{video: {car}, prompt: a red car}}\n  - *d\n")
    with pytest.raises(ConfigError, match=r"uses a YAML alias \(\*d\) at line 4"):
        load_spec(shared)
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text(f"defaults: &d {json.dumps(DEFAULTS)}\nedits:\n  - {{video: {car}, prompt: a red car}}\n")
    assert len(load_spec(anchored).edits) == 1


def test_the_known_settings_name_each_setting_once(tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text(yaml.safe_dump({"edits": [{"video": str(ASSETS / "car-turn.mp4"), "prompt": "x", "promt": "y"}]}))
    with pytest.raises(ConfigError) as refused:
        load_spec(spec)
    known = str(refused.value).split("known settings: ")[1].split(", ")
    assert "source_prompt" in known and "prompt" in known
    assert len(known) == len(set(known)), sorted(name for name in known if known.count(name) > 1)


def test_a_missing_clip_fails_its_row_and_the_other_edits_run(tmp_path, capsys):
    """The batch's choice (docs/batches.md): a clip that does not exist is a failed row, the others run,
    and the command exits 2; eval refuses such a spec before running anything."""
    edits = [
        {"name": "gone", "video": "no-such-clip.mp4", "prompt": "a red car"},
        {"name": "car", "video": str(ASSETS / "car-turn.mp4"), "prompt": "a red car"},
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"defaults": {**DEFAULTS, "cache_dir": str(tmp_path / "cache")}, "edits": edits}))
    out = tmp_path / "out"
    assert main(["batch", str(spec), "--out", str(out), "--format", "zip"]) == 2
    printed = capsys.readouterr()
    assert "1 edited, 0 up to date, 1 failed" in printed.out and "[failed] gone: video" in printed.err
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert [rows[n]["status"] for n in ("gone", "car")] == ["failed", "ok"]
    assert rows["gone"]["error"] == f"video {tmp_path / 'no-such-clip.mp4'} does not exist"
    assert (out / "car.zip").is_file() and not list(out.glob("gone*"))
    with pytest.raises(ConfigError, match="edit 1: video no-such-clip.mp4 does not exist"):
        load_spec(spec)
    # Rerun once the clip exists: only that edit runs.
    (tmp_path / "no-such-clip.mp4").symlink_to(ASSETS / "car-turn.mp4")
    assert main(["batch", str(spec), "--out", str(out), "--format", "zip"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert [rows[n]["status"] for n in ("gone", "car")] == ["ok", "skipped"]
    assert Path(out / "gone.zip").is_file()
