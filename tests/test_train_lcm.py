"""The shapes LCM-LoRA distillation script: a run saves a LoRA folder, and a new run can start from it."""

from __future__ import annotations

import json

import pytest
import torch

from shapes_world import train_lcm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_run_started_from_a_saved_lora_continues_its_weights_and_step_count(tmp_path):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    first = train_lcm.LcmConfig(steps=1, batch=2, warmup=1)
    parts, state = train_lcm.distil(first, tmp_path / "work-a")
    saved = train_lcm.save_lora_folder(first, parts, state, tmp_path / "lora", "test")
    assert state["step"] == 1 and "init" not in json.loads((saved / "manifest.json").read_text())

    fresh = train_lcm.load_parts(first)
    before = {k: v.clone() for k, v in get_peft_model_state_dict(fresh.student).items()}
    started = train_lcm.init_state(saved, fresh)
    loaded = get_peft_model_state_dict(fresh.student)
    stored = load_file(saved / train_lcm.LORA_FILE)
    assert started["step"] == 1 and started["warm_from"] == 1
    assert all(torch.equal(loaded[k], stored[f"unet.{k}"].float()) for k in loaded)
    assert any(not torch.equal(loaded[k], before[k]) for k in loaded)  # the gaussian init was replaced

    second = train_lcm.LcmConfig(steps=2, batch=2, warmup=1, init=str(saved))
    parts, state = train_lcm.distil(second, tmp_path / "work-b")
    manifest = json.loads(
        (train_lcm.save_lora_folder(second, parts, state, tmp_path / "lora-2", "test") / "manifest.json").read_text()
    )
    assert (manifest["steps"], manifest["init_steps"], len(state["losses"])) == (2, 1, 1)


def test_a_folder_of_another_rank_is_refused(tmp_path):
    config = train_lcm.LcmConfig(steps=0, batch=2, rank=4)
    parts, state = train_lcm.distil(config, tmp_path / "work")
    saved = train_lcm.save_lora_folder(config, parts, state, tmp_path / "lora", "test")
    with pytest.raises(train_lcm.EditingError, match="rank and layers"):
        train_lcm.init_state(saved, train_lcm.load_parts(train_lcm.LcmConfig(rank=8)))
