"""Streaming edits (StreamV2V, Liang et al., 2024): frames in one at a time, edited frames out.

`StreamEditor.push(frame)` edits one RGB frame: the frame is noised to the preset's SDEdit strength
(inversion none) and denoised with the request's few-step sampler; in every self-attention layer it
attends to its own keys and values, to the anchor's (the stream's first edited frame) and to a bank of
the last `bank_frames` edited frames' (per denoising step, as the frames were made at that noise level).
The autoencoder is whatever the request's model options load (the tiny one under `--preset fast`).

Memory is constant in stream length: the bank is a bounded deque per step and layer. A frame writes its
keys and values to a staging area; only a frame that completes commits them, so a frame that fails or is
dropped leaves the bank as it was. `update` changes the prompt, strength or seed between frames; `close`
frees the bank. Streams run on their own copy of the backbone's UNet with the bank processors installed
(`stream_unet`), so file edits on the same backbone never see them. The same engine serves
`python -m editing live` and the app's Live tab.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import sampling, video_io
from .attention.bank import BankAttnProcessor, BankCall
from .attention.control import AttentionControl
from .config import EditConfig
from .core import EditParts
from .errors import ConfigError
from .files import check_writable
from .frames import check_frames
from .pipeline import request_backbone, write_outputs
from .stepcache import parse_step_caches

if TYPE_CHECKING:
    from .context import ProgressFn
    from .core import EditParts
    from .models import Backbone
    from .requests import EditRequest

STREAM_MODE = "first"  # each frame's own keys and values; the anchor and the bank come from the stream bank
DEFAULT_BANK_FRAMES = 4  # StreamV2V's bank of recent frames (the presets' feature_bank)

Entry = tuple[int, torch.Tensor, torch.Tensor]  # (frame, keys, values), keys (branches, tokens, inner)


@dataclass
class StreamBank:
    """Keys and values of past edited frames, per denoising step and self-attention layer: the anchor's,
    kept for the stream, and the last `frames` frames' in bounded deques. Writes are staged and reach the
    bank only through `commit`."""

    frames: int
    anchor: dict[tuple[int, str], Entry] = field(default_factory=dict)
    recent: dict[tuple[int, str], deque] = field(default_factory=dict)
    staged: dict[tuple[int, str], Entry] = field(default_factory=dict)

    def view(self, step: int) -> StepView:
        return StepView(self, step)

    def read(self, step: int, layer: str) -> list[Entry]:
        """The anchor's entry then the recent frames' of one step and layer (oldest first; the anchor once)."""
        anchor = self.anchor.get((step, layer))
        recent = [entry for entry in self.recent.get((step, layer), ()) if anchor is None or entry[0] != anchor[0]]
        return ([anchor] if anchor is not None else []) + recent

    def stage(self, step: int, layer: str, frame: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.staged[(step, layer)] = (frame, key.detach().clone(), value.detach().clone())

    def commit(self) -> None:
        """The staged frame enters the bank (as the anchor too when there is none yet)."""
        for place, entry in self.staged.items():
            self.anchor.setdefault(place, entry)
            if self.frames > 0:
                self.recent.setdefault(place, deque(maxlen=self.frames)).append(entry)
        self.staged = {}

    def discard(self) -> None:
        self.staged = {}

    def clear(self) -> None:
        self.anchor, self.recent, self.staged = {}, {}, {}

    def sizes(self) -> dict[str, int]:
        """Entries held: anchor places, recent frames at most per place, staged places."""
        return {
            "anchor": len(self.anchor),
            "recent": max((len(d) for d in self.recent.values()), default=0),
            "staged": len(self.staged),
        }

    def nbytes(self) -> int:
        entries = [*self.anchor.values(), *(e for d in self.recent.values() for e in d), *self.staged.values()]
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for _, k, v in entries)


@dataclass(frozen=True)
class StepView:
    """The stream bank as one denoising step's feature bank (the `read`/`write` BankAttnProcessor uses)."""

    bank: StreamBank
    step: int

    def read(self, layer: str, exclude: set[int]) -> list[Entry]:
        return [entry for entry in self.bank.read(self.step, layer) if entry[0] not in exclude]

    def write(self, layer: str, frame: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.bank.stage(self.step, layer, frame, key, value)


class StreamBankControl(AttentionControl):
    """The loop's attention control for one stream frame: bank processors on every layer (only
    self-attention reads and stages), each UNet call told its step's view of the stream bank."""

    def __init__(self, bank: StreamBank, frame: int):
        self.bank, self.frame = bank, frame

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        return {"bank": BankCall(self.bank.view(step), (self.frame,), (self.frame,))}

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        yield  # the stream's UNet (stream_unet) carries the bank processors already


_STREAM_UNETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a backbone's UNet -> its stream copy
_stream_lock = threading.Lock()


def stream_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The stream's own copy of `unet`, bank processors on every attention layer, made once per UNet and
    shared by every stream on it (the processors are stateless: each call's state comes in its kwargs). File
    edits keep the original, so a stream never swaps processors under them, and a frame swaps none."""
    with _stream_lock:
        twin = _STREAM_UNETS.get(unet)
        if twin is None:
            twin = copy.deepcopy(unet)
            twin.set_attn_processor({name: BankAttnProcessor(name) for name in twin.attn_processors})
            _STREAM_UNETS[unet] = twin
        return twin


@dataclass(frozen=True)
class StreamSettings:
    """What may change between frames: the prompt, SDEdit strength and seed (with the rest of the edit)."""

    edit: EditConfig
    bank_frames: int = DEFAULT_BANK_FRAMES


class StreamEditor:
    """A streaming edit: `push(frame)` returns the edited frame (H, W, 3 uint8; sides multiples of 8)."""

    def __init__(self, parts: EditParts, backbone: Backbone, bank_frames: int | None = None):
        if parts.masking is not None or parts.attention_edit is not None or parts.tuned is not None or parts.engine.controls:
            raise ConfigError(
                "live edits take a prompt, a preset and model options only (no mask, attention edit, tuned weights or ControlNet)"
            )
        frames = parts.engine.feature_bank if bank_frames is None else bank_frames
        if not 0 <= frames <= 64:
            raise ConfigError(f"feature_bank must be between 0 and 64 frames, got {frames}")
        self.backbone = dataclasses.replace(backbone, unet=stream_unet(backbone.unet))
        self.settings = StreamSettings(parts.edit, frames or 0)
        self.bank: StreamBank | None = StreamBank(self.settings.bank_frames)
        self.count = 0  # frames completed
        self.seconds: list[float] = []  # per completed frame, bounded like the bank
        self._text = None
        # one frame per UNet call; the request's token merging and step caches (DeepCache across a frame's steps)
        self.plan = sampling.plan_frames(1, 1, STREAM_MODE).with_calls(
            parts.engine.token_merge, parse_step_caches(parts.engine.step_cache)
        )

    @classmethod
    def from_request(cls, request: EditRequest, backbone: Backbone | None = None) -> StreamEditor:
        """The engine of an edit request (its preset applied): the request's model loaded unless given."""
        return cls(EditParts.of(request), backbone or request_backbone(request))

    def update(self, prompt: str | None = None, strength: float | None = None, seed: int | None = None) -> None:
        """Change the prompt, strength or seed from the next frame on (checked as the edit options are)."""
        changes = {k: v for k, v in (("prompt", prompt), ("strength", strength), ("seed", seed)) if v is not None}
        if changes:
            edit = dataclasses.replace(self.settings.edit, **changes)
            if "prompt" in changes and edit.prompt != self.settings.edit.prompt:
                self._text = None
            self.settings = dataclasses.replace(self.settings, edit=edit)

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Edit one frame. It enters the bank only when it completes; on any failure the bank is unchanged."""
        if self.bank is None:
            raise ConfigError("the stream is closed: start a new one")
        begin = time.perf_counter()
        image = check_frames(np.asarray(frame)[None])
        try:
            edited = self._edit(image)
        except BaseException:
            self.bank.discard()
            raise
        self.bank.commit()
        self.count += 1
        self.seconds = (self.seconds + [time.perf_counter() - begin])[-64:]
        return edited[0]

    def _edit(self, image: np.ndarray) -> np.ndarray:
        backbone, config = self.backbone, self.settings.edit
        if self._text is None:
            self._text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
        scheduler = backbone.scheduler(config.sampler)
        timesteps = sampling.sampling_timesteps(scheduler, config.steps, config.strength)
        clean = sampling.encode_frames(backbone, image, 1)
        noise = sampling.shared_noise(tuple(clean.shape), config.seed, backbone.device, clean.dtype)
        latents = sampling.noise_to_timestep(backbone.scheduler(), clean, noise, timesteps[0])
        plan = self.plan
        control = StreamBankControl(self.bank, self.count)
        guidance = sampling.Guidance(self._text, config.guidance)
        hooks = sampling.LoopHooks(attention_control=control, seed=config.seed)
        latents = sampling.denoise(backbone, sampling.Schedule(scheduler, timesteps), latents, guidance, plan, hooks)
        return sampling.decode_latents(backbone, latents, 1)

    def latency(self) -> float:
        """Mean seconds per completed frame (the last 64), 0 before the first."""
        return float(np.mean(self.seconds)) if self.seconds else 0.0

    def close(self) -> None:
        """Free the bank; pushing after this is refused."""
        if self.bank is not None:
            self.bank.clear()
        self.bank = None
        self._text = None

    def __enter__(self) -> StreamEditor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_frames(editor: StreamEditor, frames: np.ndarray) -> np.ndarray:
    """Push every frame of an (N, H, W, 3) clip through the editor in order: the edited clip."""
    return np.stack([editor.push(frame) for frame in frames])


@dataclass(frozen=True)
class LiveResult:
    """What `live_video` made: the file written, the frames, and the stream's speed."""

    output: str
    frames: int
    fps: float  # edited frames per second of streaming (model loading excluded)
    latency: float  # mean seconds from a frame in to its edited frame out
    cpu_seconds: float  # mean CPU seconds of this process per frame (what a frame costs on a machine not shared)
    images: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "frames": self.frames,
            "fps": round(self.fps, 3),
            "latency_ms": round(1000 * self.latency, 1),
            "cpu_ms": round(1000 * self.cpu_seconds, 1),
        } | ({"notes": list(self.notes)} if self.notes else {})


def live_video(request: EditRequest, progress: ProgressFn | None = None) -> LiveResult:
    """Edit a clip frame by frame as a stream would (`python -m editing live`) and write it."""
    check_writable(request.output)
    clip = video_io.read_clip(request.video, request.selection, request.limits)
    editor = StreamEditor.from_request(request, request_backbone(request))
    latencies, edited = [], []
    begin, cpu = time.perf_counter(), time.process_time()
    with editor:
        for index, frame in enumerate(clip.frames):
            start = time.perf_counter()
            edited.append(editor.push(frame))
            latencies.append(time.perf_counter() - start)
            if progress is not None:
                progress("stream", index + 1, len(clip.frames))
    elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
    images = np.stack(edited)
    written, notes = write_outputs([request.output], images, clip.fps, None)
    return LiveResult(
        written[0], len(images), len(images) / elapsed, float(np.mean(latencies)), cpu / len(images), images, tuple(notes)
    )
