"""`--compile`: the UNet in channels_last memory order with its repeated transformer blocks compiled.

diffusers' regional compilation (`ModelMixin.compile_repeated_blocks`) compiles each of the UNet's
`_repeated_blocks` (`BasicTransformerBlock` for UNet2DConditionModel) with `torch.compile` instead of the
whole UNet: the blocks share one compiled graph, so compiling takes seconds rather than minutes, while the
attention processors the engine swaps in stay ordinary Python around them. channels_last is the memory
order the GPU's convolution kernels prefer. A compiled UNet is a copy; the plain backbone is never changed.

On the CPU only the memory order is changed unless `compile_on_cpu` is set: inductor's CPU code needs a C++
compiler and its first call takes longer than a short edit saves.
"""

from __future__ import annotations

import copy

import torch

COMPILE_HELP = (
    "run the UNet in channels_last order with its repeated transformer blocks compiled "
    "(torch.compile, diffusers' regional compilation; on a GPU; the first edit compiles)"
)


def compiled_unet(unet: torch.nn.Module, device: torch.device, compile_on_cpu: bool = False):
    """A copy of `unet` in channels_last with its repeated blocks compiled (on CUDA, or on the CPU when asked;
    a UNet class without declared repeated blocks keeps only the memory order)."""
    unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    if (torch.device(device).type == "cuda" or compile_on_cpu) and getattr(unet, "_repeated_blocks", None):
        unet.compile_repeated_blocks(fullgraph=False, dynamic=True)
    return unet
