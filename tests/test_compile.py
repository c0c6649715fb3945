"""`--compile` (editing.compile): a channels_last copy of the UNet, its repeated blocks compiled on a GPU.
On the CPU the copy computes what the plain UNet computes; compiling there (minutes of inductor work on a
shared CPU) is checked only when RUN_COMPILE=1."""

from __future__ import annotations

import os

import pytest
import torch

from editing.compile import compiled_unet
from editing.lora import ModelOptions
from editing.models import load_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(unet):
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    return sample, text


def test_the_compile_option_gives_a_channels_last_copy_that_computes_the_same(tiny):
    compiled = load_backbone("tiny", device="cpu", options=ModelOptions(compile=True))
    assert compiled.unet is not tiny.unet and compiled.name.endswith("+compiled") and not ModelOptions(compile=True).plain
    assert compiled.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert tiny.unet.conv_in.weight.is_contiguous()  # the plain backbone is unchanged
    sample, text = _inputs(tiny.unet)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.unet(sample, 500, encoder_hidden_states=text).sample,
            tiny.unet(sample, 500, encoder_hidden_states=text).sample,
        )


@pytest.mark.skipif(os.environ.get("RUN_COMPILE") != "1", reason="compiling on the CPU takes minutes (RUN_COMPILE=1)")
def test_regionally_compiled_blocks_compute_the_same_on_the_cpu(tiny):
    unet = compiled_unet(tiny.unet, torch.device("cpu"), compile_on_cpu=True)
    sample, text = _inputs(tiny.unet)
    with torch.no_grad():
        torch.testing.assert_close(
            unet(sample, 500, encoder_hidden_states=text).sample, tiny.unet(sample, 500, encoder_hidden_states=text).sample
        )
