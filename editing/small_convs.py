"""Wide convolutions over small feature maps as one matrix product, on the CPU.

PyTorch's CPU convolution (oneDNN) is slow on a UNet's deepest feature maps, 1280 channels over a few latent
positions, once a call holds more than one image: its time there hardly depends on the work. The same sums
done as one matrix product (the input's patches unfolded, every image's positions as rows, times the weight
matrix) take a fraction of it. `small_map_convs` switches a model's `Conv2d` layers to a subclass that takes
that path for such inputs on the CPU and runs the ordinary convolution everywhere else (narrower layers,
larger maps, 1 x 1 layers, other devices and dtypes). docs/speed.md gives the measurements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WIDE_CHANNELS = 1280  # a layer with this many input channels or more runs as a matrix product, for inputs of
WIDE_POSITIONS = 256  # at most this many positions in the whole batch (images x height x width)


class SmallMapConv2d(torch.nn.Conv2d):
    """A `Conv2d` whose wide, small-map CPU inputs run as one matrix product (same weights, same result up to
    float rounding); every other input runs the ordinary convolution."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._as_product(input):
            return super()._conv_forward(input, weight, bias)
        count, _, height, width = input.shape
        rows = (height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        cols = (width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        columns = F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C k k, positions)
        patches = columns.transpose(1, 2).reshape(count * rows * cols, -1)  # every image's positions as rows
        out = F.linear(patches, weight.reshape(self.out_channels, -1), bias)  # one product: the weight read once
        return out.view(count, rows, cols, self.out_channels).permute(0, 3, 1, 2).contiguous()

    def _as_product(self, input: torch.Tensor) -> bool:
        if input.device.type != "cpu" or input.dtype != torch.float32 or input.dim() != 4:
            return False
        if self.kernel_size == (1, 1) or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        return self.in_channels >= WIDE_CHANNELS and input.shape[0] * input.shape[2] * input.shape[3] <= WIDE_POSITIONS


def small_map_convs(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with each plain `Conv2d` switched, in place, to `SmallMapConv2d` (weights untouched)."""
    for module in model.modules():
        if type(module) is torch.nn.Conv2d:
            module.__class__ = SmallMapConv2d
    return model
