"""Wide small-map convolutions as one matrix product (editing.small_convs): the same result as the ordinary
convolution for the layer shapes that take it, the ordinary path itself wherever the product is not taken,
and switched on in every backbone, ControlNet and motion UNet the loaders build."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from editing import small_convs
from editing.lora import ModelOptions
from editing.models import load_backbone, load_controlnet
from editing.small_convs import SmallMapConv2d, small_map_convs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> torch.nn.Conv2d:
    torch.manual_seed(cin + cout + kernel + stride)
    return small_map_convs(torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "count", "side"),
    [
        (1280, 32, 3, 1, 3, 4),  # 48 positions in the batch
        (1280, 16, 3, 1, 1, 2),
        (1280, 16, 3, 2, 2, 4),  # a downsampler
        (2560, 16, 3, 1, 4, 8),  # 256 positions: the most that takes the product
    ],
)
def test_a_wide_small_map_runs_as_a_product_and_computes_the_convolution(cin, cout, kernel, stride, count, side):
    conv = _conv(cin, cout, kernel, stride)
    x = torch.randn(count, cin, side, side, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert conv._as_product(x)
    out = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # the gradients (one-shot tuning trains through these layers) match too
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("cin", "count", "side", "dtype", "kernel"),
    [
        (640, 2, 4, torch.float32, 3),  # a narrower layer
        (1280, 5, 8, torch.float32, 3),  # 320 positions in the batch
        (1280, 2, 4, torch.float32, 1),  # a 1 x 1 projection
        (1280, 2, 4, torch.float64, 3),  # another dtype
    ],
)
def test_anything_else_runs_the_ordinary_convolution_bit_for_bit(cin, count, side, dtype, kernel):
    conv = _conv(cin, 8, kernel).to(dtype)
    x = torch.randn(count, cin, side, side, dtype=dtype, generator=torch.Generator().manual_seed(1))
    assert not conv._as_product(x)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding))


def test_switching_keeps_the_weights_and_leaves_subclasses_alone():
    class Custom(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), Custom(4, 4, 1), torch.nn.Linear(4, 4))
    weight = model[0].weight
    assert small_map_convs(model) is model
    assert type(model[0]) is SmallMapConv2d and model[0].weight is weight
    assert type(model[1]) is Custom and type(model[2]) is torch.nn.Linear


def test_every_loaded_unet_controlnet_and_motion_unet_has_them(tiny):
    def convs(module):
        return {type(m) for m in module.modules() if isinstance(m, torch.nn.Conv2d)}

    assert convs(tiny.unet) == {SmallMapConv2d}
    assert convs(load_controlnet("random", tiny)) == {SmallMapConv2d}
    motion = load_backbone("tiny", device="cpu", options=ModelOptions(motion_adapter="random"))
    assert convs(motion.unet) == {SmallMapConv2d}


def test_a_unet_with_them_computes_what_the_plain_one_does(tiny, monkeypatch):
    """The tiny UNet's layers are narrow; with the width threshold lowered, its small maps take the product."""
    monkeypatch.setattr(small_convs, "WIDE_CHANNELS", 1)
    plain = torch.nn.Module()
    plain.unet = type(tiny.unet).from_config(tiny.unet.config)
    plain.unet.load_state_dict(tiny.unet.state_dict())
    assert not any(isinstance(m, SmallMapConv2d) for m in plain.unet.modules())
    taken = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: taken.append(m._as_product(a[0])))
        for m in tiny.unet.modules()
        if isinstance(m, SmallMapConv2d)
    ]
    sample = torch.randn(3, tiny.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    text = torch.randn(3, 77, tiny.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            tiny.unet(sample, 500, encoder_hidden_states=text).sample,
            plain.unet.eval()(sample, 500, encoder_hidden_states=text).sample,
            rtol=1e-4,
            atol=1e-5,
        )
    for hook in hooks:
        hook.remove()
    assert any(taken) and not all(taken)
