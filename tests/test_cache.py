"""The shared helpers: the content-addressed cache, the atomic-write helper and the frame-array check."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from editing import cache, files, frames
from editing.cache import TensorCache, cache_key, content_hash, evict_least_recent


def test_cache_keys_are_the_sha256_of_the_canonical_json_so_existing_caches_still_hit():
    """The key is derived here from its definition (SHA-256 of sorted-key JSON, 32 hex digits): a change
    to how keys are made would orphan every cached inversion, condition map and tuning."""
    parts = dict(kind="inversion", source={"content": "ab" * 32, "indices": [0, 2, 4]}, steps=10, dtype="torch.float32")
    expected = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    assert cache_key(**parts) == expected
    assert cache_key(**dict(reversed(parts.items()))) == expected
    assert cache_key(**{**parts, "steps": 11}) != expected


def test_content_hash_is_the_files_sha256_and_follows_its_bytes(tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(b"first")
    assert content_hash(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second!")  # another size: never the remembered digest of the old bytes
    assert content_hash(path) == hashlib.sha256(b"second!").hexdigest()


def test_a_failed_save_leaves_neither_an_entry_nor_a_partial_file(tmp_path, monkeypatch):
    store = TensorCache(tmp_path, "inversions")
    store.save("kept", {"x": torch.ones(3)})

    def crash(data, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        store.save("lost", {"x": torch.ones(3)})
    monkeypatch.undo()
    assert sorted(p.name for p in store.directory.iterdir()) == ["kept.pt"]
    assert torch.equal(store.load("kept")["x"], torch.ones(3))


def test_eviction_passes_by_writes_in_progress(tmp_path):
    """Another process's partial file is neither counted nor deleted; without that check (the control)
    eviction deletes it under the writer, whose rename then fails."""
    folder = tmp_path / "tunings"
    folder.mkdir()
    with files.atomic_output(folder / "new.safetensors") as partial:
        partial.write_bytes(b"x" * 1000)
        old = folder / "old.safetensors"
        old.write_bytes(b"y" * 10)
        os.utime(partial, ns=(1, 1))  # the partial looks the least recently used
        evict_least_recent(list(folder.glob("*.safetensors")), max_bytes=100)
        assert partial.exists() and old.exists()  # within the cap once the partial is not counted
        control = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        assert control[0] == partial  # a plain least-recently-used pass would take the partial first
    assert sorted(p.name for p in folder.iterdir()) == ["new.safetensors", "old.safetensors"]


def test_least_recently_used_eviction_keeps_the_newest_and_removes_companions(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(b"z" * 100)
        path.with_suffix(".json").write_text("{}")
        os.utime(path, ns=(i + 1, i + 1))
        paths.append(path)
    cache.touch(paths[0])  # just used: now the most recent
    evict_least_recent(paths, max_bytes=150, keep_newest=True, companions=(".json",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "0.safetensors"]
    evict_least_recent([paths[0]], max_bytes=0, keep_newest=True)
    assert paths[0].exists()  # the newest always stays


def test_atomic_output_renames_only_on_success(tmp_path):
    target = tmp_path / "deep" / "out.json"
    with files.atomic_output(target) as partial:
        assert partial.parent == target.parent and partial.suffix == ".json" and files.is_partial(partial)
        partial.write_text("done")
    assert target.read_text() == "done" and not files.is_partial(target)
    with pytest.raises(RuntimeError):
        with files.atomic_output(target) as partial:
            partial.write_text("half")
            raise RuntimeError("crashed")
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((1, 8, 8, 3), np.uint8),
    ],
)
def test_the_frame_check_names_the_argument_and_what_is_wrong(bad):
    with pytest.raises(ValueError, match=r"clip must be an \(N, H, W, 3\) uint8 array with N >= 2, got"):
        frames.check_frames(bad, "clip", minimum=2)


def test_the_frame_check_passes_good_frames_through_as_arrays():
    good = np.zeros((2, 4, 6, 3), np.uint8)
    assert frames.check_frames(good) is good
    assert frames.check_frames(good[:0], minimum=0).shape == (0, 4, 6, 3)
    with pytest.raises(ValueError, match="N >= 1"):
        frames.check_frames(good[:0])
