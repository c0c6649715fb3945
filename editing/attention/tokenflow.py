"""Keyframe propagation of self-attention (after TokenFlow, Geyer et al., ICLR 2024).

While inverting, every frame attends only to itself (as TokenFlow's own inversion does) and the source's
self-attention features, the input tokens of one self-attention layer per UNet resolution, are stored
per inversion step (`SourceFeatures`, bounded: see `store_nbytes` and `STORE_CAP`). Each denoising step
then runs in two passes:

1. Keyframes. One keyframe per window of `--window` frames, at an offset drawn per step from a
   generator seeded by the edit's `--seed` (the same offset in every window, as TokenFlow does). The
   keyframes run through the UNet together, their self-attention joint across all of them (extended
   attention), in groups of at most one chunk; each self-attention layer keeps their attention outputs.
2. Propagation. The clip's planned batches run as usual, but no self-attention is computed: a keyframe
   takes its own output, every other frame the blend of its two nearest keyframes' outputs, each
   gathered at the token's nearest neighbour (cosine similarity of the stored source features of the
   inversion step at the same timestep) in that keyframe. The weights are linear in temporal distance: d_next / (d_prev + d_next) for
   the previous keyframe. Frames before the first or after the last keyframe take that one keyframe.

Attention outputs are blended before the output projection (an affine map, so blending after it with
weights summing to 1 is the same). Layers of a resolution share its correspondences. When the store
would exceed its cap, the finest resolutions are not stored and take the next coarser resolution's
correspondences, upsampled (nearest).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .bank import _width
from .control import AttentionControl
from .cross_frame import NO_CALL, CrossFrameAttnProcessor, FrameLayout, Heads, LayerCall, attention_processors
from .plan import FrameBatch
from .store import layer_downsampling, layer_shape, level_tokens

if TYPE_CHECKING:
    from ..sampling import Guidance, StepContext

FEATURE_DIMS = 64  # stored channels per token: wider layers are projected (seeded Gaussian, cosine kept in expectation)
STORE_CAP = 2 << 30  # bytes of source features kept for one inversion (in memory and in its cache entry)
BYTES_PER_VALUE = 2  # fp16
KEYFRAME_SEED = 0  # the per-step keyframe offsets come from the edit's seed (this by default) and the step index
PROJECTION_SEED = 1234


# ---------------------------------------------------------------- keyframes and blend weights


def keyframes(num_frames: int, window: int, step: int, seed: int = KEYFRAME_SEED) -> tuple[int, ...]:
    """One keyframe per window of `window` frames, all at the same seeded offset drawn for this step
    (clipped to the last frame in a short last window)."""
    offset = int(np.random.default_rng((seed, step)).integers(window))
    return tuple(sorted({min(start + offset, num_frames - 1) for start in range(0, num_frames, window)}))


def blend_weights(frame: int, keys: Sequence[int]) -> list[tuple[int, float]]:
    """(keyframe, weight) pairs of a frame: itself if it is a keyframe, else its two nearest keyframes
    (previous and next) weighted linearly by temporal distance, or the one keyframe on its side."""
    if frame in keys:
        return [(frame, 1.0)]
    before = [k for k in keys if k < frame]
    after = [k for k in keys if k > frame]
    if not before or not after:
        return [((before or after)[-1 if before else 0], 1.0)]
    previous, following = before[-1], after[0]
    to_previous, to_next = frame - previous, following - frame
    return [(previous, to_next / (to_previous + to_next)), (following, to_previous / (to_previous + to_next))]


# ---------------------------------------------------------------- the source feature store


def recorded_layers(unet_config: Mapping[str, Any]) -> dict[str, int]:
    """The self-attention layer whose input represents each UNet resolution: {layer name: downsampling};
    the decoder's first at each resolution, else the mid block's or the encoder's."""
    chosen: dict[int, str] = {}
    for name, kind, downsample in layer_downsampling(unet_config):
        if kind != "self":
            continue
        if downsample not in chosen or (name.startswith("up_blocks") and not chosen[downsample].startswith("up_blocks")):
            chosen[downsample] = name
    return {name: downsample for downsample, name in chosen.items()}


def _layer_width(name: str, unet_config: Mapping[str, Any]) -> int:
    return _width(name, list(unet_config["block_out_channels"]))


def stored_levels(
    unet_config: Mapping[str, Any], state: TokenFlowState, steps: int, cap: int = STORE_CAP, dims: int = FEATURE_DIMS
) -> dict[str, int]:
    """The recorded layers kept under the byte cap for the state's clip: the finest resolutions are dropped first."""
    layers = recorded_layers(unet_config)
    latent_size, frames = (state.latent_height, state.latent_width), state.num_frames
    kept = dict(sorted(layers.items(), key=lambda item: item[1]))  # finest first
    while kept and store_nbytes(unet_config, latent_size, frames, steps, dims, tuple(kept.values())) > cap:
        kept.pop(next(iter(kept)))
    if not kept:
        coarsest = max(layers.values())
        need = store_nbytes(unet_config, latent_size, frames, steps, dims, (coarsest,))
        raise ConfigError(
            f"attention tokenflow would store {need / 1e9:.2f} GB of source features even at its coarsest resolution, over its cap of {cap / 1e9:.2f} GB: use fewer frames, steps or a smaller size"
        )
    return kept


def store_nbytes(
    unet_config: Mapping[str, Any],
    latent_size: tuple[int, int],
    frames: int,
    steps: int,
    dims: int = FEATURE_DIMS,
    downsamplings: Sequence[int] | None = None,
) -> int:
    """Bytes of the source features: frames x steps x (tokens x min(channels, dims)) over the recorded
    layer of each stored resolution (latents of `latent_size`, height and width), fp16."""
    total = 0
    for name, downsample in recorded_layers(unet_config).items():
        if downsamplings is None or downsample in downsamplings:
            total += level_tokens(*latent_size, downsample) * min(_layer_width(name, unet_config), dims)
    return BYTES_PER_VALUE * frames * steps * total


@dataclass
class SourceFeatures:
    """Per inversion step and resolution (token count): the source frames' features (frames, tokens, dims) fp16."""

    num_frames: int
    features: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def put(self, step: int, frames: Sequence[int], hidden: torch.Tensor, dims: int = FEATURE_DIMS) -> None:
        """Store one branch's input tokens (len(frames), tokens, channels) of the clip frames `frames`."""
        tokens, channels = hidden.shape[1:]
        if channels > dims:
            hidden = hidden.float() @ projection(channels, dims).to(hidden.device)
        key = (step, tokens)
        if key not in self.features:
            self.features[key] = torch.zeros((self.num_frames, tokens, min(channels, dims)), dtype=torch.float16)
        self.features[key][list(frames)] = hidden.detach().to("cpu", torch.float16)

    def get(self, step: int, tokens: int) -> torch.Tensor | None:
        return self.features.get((step, tokens))

    def steps(self) -> int:
        return len({step for step, _ in self.features})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features.values())

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat {name: tensor} for the inversion's cache entry."""
        return {f"tokenflow.{step}.{tokens}": t for (step, tokens), t in self.features.items()}

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor], num_frames: int) -> SourceFeatures:
        features = {}
        for name, tensor in data.items():
            if name.startswith("tokenflow."):
                _, step, tokens = name.split(".")
                features[(int(step), int(tokens))] = tensor
        return cls(num_frames, features)


@functools.lru_cache(maxsize=16)
def projection(channels: int, dims: int) -> torch.Tensor:
    """A fixed (channels, dims) Gaussian projection, scaled by 1/sqrt(dims) (Johnson-Lindenstrauss)."""
    generator = torch.Generator().manual_seed(PROJECTION_SEED + channels)
    return torch.randn(channels, dims, generator=generator) / math.sqrt(dims)


def nearest_tokens(frame_features: torch.Tensor, key_features: torch.Tensor) -> torch.Tensor:
    """(tokens,) long: for each token of a frame, the most cosine-similar token of a keyframe."""
    a = F.normalize(frame_features.float(), dim=-1)
    b = F.normalize(key_features.float(), dim=-1)
    return (a @ b.T).argmax(dim=-1)


def upsample_matches(coarse: torch.Tensor, coarse_shape: tuple[int, int], fine_shape: tuple[int, int]) -> torch.Tensor:
    """Correspondences of a finer grid from a coarser one: a fine token takes its coarse parent's match,
    at the same offset inside the matched parent."""
    (ch, cw), (fh, fw) = coarse_shape, fine_shape
    sy, sx = math.ceil(fh / ch), math.ceil(fw / cw)
    ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
    parent = (ys // sy).clamp(max=ch - 1) * cw + (xs // sx).clamp(max=cw - 1)
    match = coarse.cpu()[parent.reshape(-1)]
    my, mx = match // cw, match % cw
    y = (my * sy + ys.reshape(-1) % sy).clamp(max=fh - 1)
    x = (mx * sx + xs.reshape(-1) % sx).clamp(max=fw - 1)
    return (y * fw + x).to(coarse.device)


# ---------------------------------------------------------------- per-edit state and the processor


@dataclass
class TokenFlowState:
    """One edit's TokenFlow state: the source features, and at the current step the keyframes, their
    attention outputs per layer and the correspondences per resolution."""

    num_frames: int
    latent_height: int
    latent_width: int
    source: SourceFeatures | None = None
    recording: bool = False
    record_layers: frozenset[str] = frozenset()
    inverted_steps: int = 0
    step: int = -1
    keys: tuple[int, ...] = ()
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (branches, keyframes, heads, tokens, d)
    _matches: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)

    def begin(self, step: int, keys: tuple[int, ...]) -> None:
        if step != self.step or keys != self.keys:
            self.step, self.keys, self.outputs, self._matches = step, tuple(keys), {}, {}

    def source_step(self) -> int:
        """The inversion step whose features go with the current denoising step (same timestep)."""
        return self.inverted_steps - 1 - self.step

    def matches(self, frame: int, key: int, tokens: int, device: torch.device) -> torch.Tensor:
        """(tokens,) long: nearest-neighbour token of keyframe `key` for each token of `frame`."""
        cache = (frame, key, tokens)
        if cache not in self._matches:
            self._matches[cache] = self._compute(frame, key, tokens, device)
        return self._matches[cache]

    def _compute(self, frame: int, key: int, tokens: int, device: torch.device) -> torch.Tensor:
        step = self.source_step()
        stored = self.source.get(step, tokens) if self.source is not None else None
        if stored is not None:
            return nearest_tokens(stored[frame].to(device), stored[key].to(device))
        coarser = sorted((t for s, t in (self.source.features if self.source else {}) if s == step and t < tokens), reverse=True)
        if not coarser:
            raise RuntimeError(f"attention tokenflow has no source features for step {step} at {tokens} tokens")
        coarse = self.matches(frame, key, coarser[0], device)
        return upsample_matches(
            coarse,
            layer_shape(coarser[0], self.latent_height, self.latent_width),
            layer_shape(tokens, self.latent_height, self.latent_width),
        )


@dataclass(frozen=True)
class TokenFlowCall:
    """Per-UNet-call state: the edit's state, the pass ("record", "keyframes" or "propagate") and the
    clip frames of the batch."""

    state: TokenFlowState
    phase: str
    frames: tuple[int, ...]


class TokenFlowAttnProcessor(CrossFrameAttnProcessor):
    """Self-attention of one layer: records source features (inversion), joint attention among the
    keyframes (keyframe pass), or keyframe outputs propagated along the source's correspondences."""

    every_frame_kv = True  # extend_context reads the batch's own keys and values

    def __init__(self, layer: str):
        self.layer = layer

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        call: LayerCall | None = None,
    ):
        call = call or NO_CALL
        tokenflow = call.extra.get("tokenflow")
        if (
            tokenflow is not None
            and tokenflow.phase == "record"
            and encoder_hidden_states is None
            and self.layer in tokenflow.state.record_layers
        ):
            tokens = hidden_states if hidden_states.ndim == 3 else hidden_states.flatten(2).transpose(1, 2)
            count = len(tokenflow.frames)
            tokenflow.state.source.put(
                tokenflow.state.step, tokenflow.frames, tokens[:count]
            )  # the first branch (inversion has one)
        return self.process(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call)

    def extend_context(
        self,
        own: tuple[torch.Tensor, torch.Tensor],
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        frames: FrameLayout,
        tokenflow: TokenFlowCall | None = None,
        **extra,
    ):
        if tokenflow is None or tokenflow.phase != "keyframes":
            return key, value, mask
        own_key, own_value = own  # joint attention: every keyframe attends to all keyframes of its branch
        batch, length, inner = own_key.shape

        def joint(t: torch.Tensor) -> torch.Tensor:
            per_branch = t.view(batch // frames.num_frames, frames.num_frames * length, inner)
            return per_branch.repeat_interleave(frames.num_frames, dim=0)

        return joint(own_key), joint(own_value), None

    def attend(
        self, attn: torch.nn.Module, heads: Heads, is_self: bool, tokenflow: TokenFlowCall | None = None, **extra: Any
    ) -> torch.Tensor:
        if not is_self or tokenflow is None or tokenflow.phase == "record":
            return super().attend(attn, heads, is_self)
        query = heads.query
        state, count = tokenflow.state, len(tokenflow.frames)
        batch, head_count, tokens, dim = query.shape
        branches = batch // count
        if tokenflow.phase == "keyframes":
            out = super().attend(attn, heads, is_self)
            state.outputs[self.layer] = out.view(branches, count, head_count, tokens, dim)
            return out
        return (
            propagate(state, self.layer, tokenflow.frames, branches, query.device)
            .reshape(batch, head_count, tokens, dim)
            .to(query.dtype)
        )


def propagate(state: TokenFlowState, layer: str, frames: Sequence[int], branches: int, device: torch.device) -> torch.Tensor:
    """(branches, len(frames), heads, tokens, d): each frame's blend of its nearest keyframes' outputs,
    gathered at its tokens' nearest neighbours."""
    keyed = state.outputs[layer]
    _, _, heads, tokens, dim = keyed.shape
    position = {k: i for i, k in enumerate(state.keys)}
    result = []
    for frame in frames:
        mixed = None
        for key, weight in blend_weights(frame, state.keys):
            source = keyed[:, position[key]]  # (branches, heads, tokens, d)
            if key != frame:
                source = source[:, :, state.matches(frame, key, tokens, device)]
            mixed = weight * source if mixed is None else mixed + weight * source
        result.append(mixed)
    return torch.stack(result, dim=1)


class TokenFlowControl(AttentionControl):
    """The loop's attention control for `--attention tokenflow`: records the source's features while
    inverting, and at each denoising step runs the keyframe pass before the planned batches."""

    def __init__(self, num_frames: int, latent_height: int, latent_width: int, cap: int = STORE_CAP, dims: int = FEATURE_DIMS):
        self.state = TokenFlowState(num_frames, latent_height, latent_width)
        self.cap, self.dims = cap, dims
        self._phase = "propagate"  # the pass the planned batches run; "keyframes" during begin_step's own pass

    def cache_key(self) -> str:
        """What, beyond the inversion's own key, changes the stored features."""
        return f"tokenflow-v1:dims={self.dims}:cap={self.cap}:seed={PROJECTION_SEED}"

    @contextlib.contextmanager
    def recording(self, unet: torch.nn.Module, steps: int) -> Iterator[dict]:
        """While inverting: store the source features; yields the {name: tensor} record, filled on exit."""
        levels = stored_levels(unet.config, self.state, steps, self.cap, self.dims)
        self.state.source = SourceFeatures(self.state.num_frames)
        self.state.record_layers, self.state.recording = frozenset(levels), True
        record: dict = {}
        try:
            yield record
        finally:
            self.state.recording = False
        record.update(self.state.source.to_tensors())

    def use_source(self, record: dict, inverted_steps: int) -> None:
        """Sample with the source features recorded by an inversion (fresh or from the cache)."""
        source = SourceFeatures.from_tensors(record, self.state.num_frames)
        if source.steps() != inverted_steps:
            raise RuntimeError(
                f"attention tokenflow needs source features of {inverted_steps} inversion steps, got {source.steps()}"
            )
        self.state.source, self.state.inverted_steps = source, inverted_steps

    def begin_step(self, context: StepContext, guidance: Guidance) -> None:
        """Before the step's batches: choose this step's keyframes and run them through the UNet jointly."""
        state = self.state
        if state.recording:
            state.step = context.index
            return
        window = context.plan.window
        state.begin(context.index, keyframes(state.num_frames, window, context.index, context.seed))
        group = max(len(batch.ids) for batch in context.plan.batches)  # memory: one chunk's worth of keyframes at a time
        self._phase = "keyframes"
        try:
            outputs: dict[str, list[torch.Tensor]] = {}
            for start in range(0, len(state.keys), group):
                keys = state.keys[start : start + group]
                state.outputs = {}
                context.batch_noise(FrameBatch(keys, keys), guidance)
                for layer, out in state.outputs.items():
                    outputs.setdefault(layer, []).append(out)
            state.outputs = {layer: torch.cat(parts, dim=1) for layer, parts in outputs.items()}
        finally:
            self._phase = "propagate"

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        phase = "record" if self.state.recording else self._phase
        return {"tokenflow": TokenFlowCall(self.state, phase, tuple(frames))}

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        installed = {
            name: TokenFlowAttnProcessor(name) for name in unet.attn_processors
        }  # cross-attention passes through unchanged
        with attention_processors(unet, installed):
            yield


def make_tokenflow_control(frames: np.ndarray, latent_height: int, latent_width: int) -> TokenFlowControl:
    return TokenFlowControl(len(frames), latent_height, latent_width)
