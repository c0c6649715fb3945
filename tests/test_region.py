"""Region edits with masks, and object removal (editing.masks, editing.region, editing.removal)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from editing.config import ControlSpec, EditConfig, EngineConfig
from editing.core import EditParts
from editing.errors import ConfigError
from editing.masks import feathered, grown
from editing.masks.options import MaskConfig
from editing.region import masked_edit
from shapes_world.benchmark import benchmark_clip, mask_iou, write_lossless
from shapes_world.world import Motion, make_clip, without_object

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip():
    """A 64 px shapes clip with two moving objects on a plain background (the first one's background is seen in other frames)."""
    return benchmark_clip(1)


def mask_video(path, masks: np.ndarray):
    return str(write_lossless(path, np.repeat(masks[..., None].astype(np.uint8) * 255, 3, axis=-1)))


def parts_for(tmp_path, masks, engine=None, **masking) -> EditParts:
    engine = engine or {}
    return EditParts(
        EditConfig(prompt="a red star on a blue background", steps=2, guidance=3.0),
        EngineConfig(cache_dir=str(tmp_path / "cache"), **engine),
        masking=MaskConfig(mask=mask_video(tmp_path / "mask.mp4", masks), **masking),
    )


@pytest.mark.parametrize(
    "engine",
    [{"attention": mode} for mode in ("none", "first", "sparse-causal", "full", "window", "flow", "tokenflow")]
    + [{"keyframes": "2"}, {"inversion": "none"}, {"controls": (ControlSpec("canny"),)}],
)
def test_pixels_outside_mask_and_feather_are_the_source(tmp_path, tiny, clip, engine):
    frames, masks = clip.frames[:4], clip.masks[:4, 0]
    out = masked_edit(frames, parts_for(tmp_path, masks, engine, region=True, mask_grow=2, mask_feather=3), tiny).frames
    weights = feathered(grown(masks, 2), 3)
    assert np.array_equal(out[weights == 0], frames[weights == 0])
    assert not np.array_equal(out[weights == 1], frames[weights == 1])  # the edit did change the region


def test_empty_mask_returns_the_source(tmp_path, tiny, clip):
    frames = clip.frames[:3]
    out = masked_edit(frames, parts_for(tmp_path, np.zeros(frames.shape[:3], bool), region=True, mask_feather=2), tiny)
    assert np.array_equal(out.frames, frames)


def test_full_mask_equals_the_global_edit(tmp_path, tiny, clip):
    frames = clip.frames[:3]
    parts = parts_for(tmp_path, np.ones(frames.shape[:3], bool), region=True)
    whole = EditParts(parts.edit, parts.engine)
    assert np.array_equal(masked_edit(frames, parts, tiny).frames, masked_edit(frames, whole, tiny).frames)


def test_removal_fills_from_other_frames_without_diffusion(tmp_path, tiny, clip):
    holes = clip.masks[:, 0]
    result = masked_edit(clip.frames, parts_for(tmp_path, holes, remove=True), tiny)
    counts = result.removal
    assert counts["diffused"] == 0 and counts["diffused_frames"] == []
    assert counts["from_frames"] == counts["hole_pixels"] == holes.sum()
    truth = without_object(clip, 0)
    assert np.array_equal(result.frames[holes], truth[holes])  # the background other frames show, exactly
    assert np.array_equal(result.frames[~holes], clip.frames[~holes])


def test_removal_diffuses_only_what_no_frame_shows(tmp_path, tiny, clip):
    still = make_clip(clip.scene, (Motion(), clip.motions[1]), 3)  # the first object never moves: nothing shows behind it
    holes = still.masks[:, 0]
    result = masked_edit(still.frames, parts_for(tmp_path, holes, remove=True), tiny)
    counts = result.removal
    assert counts["diffused"] == holes.sum() and len(counts["diffused_frames"]) == 1  # made once, carried to the others
    assert np.array_equal(result.frames[~holes], still.frames[~holes])
    assert np.array_equal(result.frames[1][holes[1]], result.frames[0][holes[0]])  # a still hole: the same made background


def test_flow_tracked_mask_follows_the_object(clip):
    from editing.masks.flow_track import track_by_flow

    truth = clip.masks[:, 0]
    tracked = track_by_flow(clip.frames, truth[0], 0)
    assert np.mean([mask_iou(a, b) for a, b in zip(tracked, truth)]) >= 0.9


@pytest.mark.parametrize("index", [4, 12])
def test_flow_tracked_mask_takes_back_what_an_occluder_uncovers(index):
    """Textured clips 4 and 12 (objects on stripes, one crossing the other): the part of the circle (or
    square) a passing object uncovers has the occluder as its flow's source, and must rejoin the mask
    (min IoU over the frames was 0.75 and 0.65)."""
    from editing.masks.flow_track import track_by_flow

    clip = benchmark_clip(index)
    truth = clip.masks[:, 0]
    tracked = track_by_flow(clip.frames, truth[0], 0)
    assert min(mask_iou(a, b) for a, b in zip(tracked, truth)) >= 0.9


@pytest.mark.parametrize("index", [6, 10])
def test_a_flow_tracked_mask_takes_in_nothing_of_a_neighbour_passing_beside_it(index):
    """Occlusion clips 6 and 10: a still object, another passing behind it. Where the passing object meets
    it, the flow is untrusted and the pixels are judged by colour; they were compared only with colours
    3 px around the object, where the passing object (5 px away in frame 0) was not, and 11 of its pixels
    joined the mask in frame 1 of clip 10."""
    from editing.masks.flow_track import track_by_flow

    clip = benchmark_clip(index)
    tracked = track_by_flow(clip.frames, clip.masks[0, 1], 0)
    assert not (tracked & clip.masks[:, 0]).any()
    assert min(mask_iou(a, b) for a, b in zip(tracked, clip.masks[:, 1])) >= 0.95


def test_one_frame_mask_file_is_tracked_and_previewed(tmp_path, tiny, clip):
    from PIL import Image

    from editing.region import clip_mask

    Image.fromarray(clip.masks[2, 0].astype(np.uint8) * 255).save(tmp_path / "drawn.png")  # drawn on frame 2, tracked both ways
    config = MaskConfig(mask=f"{tmp_path / 'drawn.png'}@2", region=True, mask_preview=str(tmp_path / "preview.gif"))
    assert config.source == "flow"
    parts = EditParts(EditConfig(prompt="a star"), masking=config)
    made = clip_mask(clip.frames[:4], parts, tiny)
    assert np.mean([mask_iou(a, b) for a, b in zip(made.masks, clip.masks[:4, 0])]) >= 0.9
    overlay = made.overlay(clip.frames[:4])
    assert overlay.shape == (4, *clip.frames.shape[1:]) and np.array_equal(overlay[~made.grown], clip.frames[:4][~made.grown])


@pytest.mark.parametrize("masking", [{"region": True}, {"remove": True}])
def test_a_tracked_mask_and_the_edit_share_one_computation_of_the_flows(tmp_path, tiny, clip, monkeypatch, masking):
    """The flow tracker, the keyframes' choice and propagation (or the removal's fill) read the source's
    flows; a masked edit computes them once (they were computed two or three times)."""
    from PIL import Image

    import editing.keyframes

    made = []
    compute = editing.keyframes._clip_flows
    monkeypatch.setattr(editing.keyframes, "_clip_flows", lambda frames: made.append(len(frames)) or compute(frames))
    Image.fromarray(clip.masks[0, 0].astype(np.uint8) * 255).save(tmp_path / "drawn.png")
    config = MaskConfig(mask=f"{tmp_path / 'drawn.png'}@0", **masking)
    parts = EditParts(
        EditConfig(prompt="a red star", steps=2), EngineConfig(cache_dir=str(tmp_path / "c"), keyframes="2"), masking=config
    )
    masked_edit(clip.frames[:4], parts, tiny)
    assert made == [4]
    masked_edit(clip.frames[:4], parts, tiny)  # a new edit: its own memo, its own flows
    assert made == [4, 4]


def test_a_masked_edit_in_a_sessions_memo_keeps_the_flows_there(tmp_path, tiny, clip):
    """A style session's memo starts empty (and an empty memo is falsy): a masked edit must keep its flows
    in it, not in a memo of its own, so the session's next prompt finds them."""
    from PIL import Image

    from editing.context import frames_key
    from editing.memo import ClipMemo, remembering

    Image.fromarray(clip.masks[0, 0].astype(np.uint8) * 255).save(tmp_path / "drawn.png")
    config = MaskConfig(mask=f"{tmp_path / 'drawn.png'}@0", region=True)
    parts = EditParts(
        EditConfig(prompt="a red star", steps=2), EngineConfig(cache_dir=str(tmp_path / "c"), keyframes="2"), masking=config
    )
    memo = ClipMemo()
    with remembering(memo):
        masked_edit(clip.frames[:4], parts, tiny)
    assert memo.get(("flows", frames_key(clip.frames[:4]).content)) is not None


def test_grow_and_feather():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 14:18, 14:18] = True
    bigger = grown(masks, 3)
    assert bigger.sum() > masks.sum() and bigger[masks].all() and not bigger[0, 0, 0]
    weights = feathered(bigger, 4)
    distance = np.hypot(*np.nonzero(weights[0] > 0)[::-1] - np.array([[16], [16]]))
    assert weights[bigger].min() == 1 and distance.max() < 2 + 3 + 4 + 2


@pytest.mark.parametrize(
    "values, word",
    [
        ({"region": True}, "needs a mask"),
        ({"mask": "m.mp4", "mask_words": "star", "region": True}, "not both"),
        ({"mask": "m.mp4"}, "--region"),
        ({"mask": "m.mp4", "region": True, "remove": True}, "cannot be combined"),
        ({"mask": "m.mp4", "region": True, "inpaint_model": "x"}, "inpaint_model needs remove"),
        ({"mask": "m.png@-1", "region": True}, "frame number"),
        ({"mask": "m.mp4", "region": True, "mask_grow": -1}, "mask_grow"),
    ],
)
def test_bad_mask_options_name_the_field(values, word):
    with pytest.raises(ConfigError, match=word):
        MaskConfig(**values)


def test_options_come_from_the_one_schema():
    from editing.requests import options

    found = {option.name: option for option in options("edit")}
    for name in (
        "mask",
        "mask_words",
        "mask_track",
        "mask_grow",
        "mask_feather",
        "mask_preview",
        "region",
        "remove",
        "inpaint_model",
    ):
        assert name in found
    assert found["mask"].file == "mask"  # the app asks for an upload, never a server path


def tiny_sam2_config():
    """A random SAM 2 video model for 64 px frames. Like the real checkpoints (features 256, memory 64) its
    features are wider than its memory: transformers' memory attention reads 64-channel memories whatever the
    config says, and fits object pointers to the memory only by splitting wider ones."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import Sam2VideoMaskDecoderConfig, Sam2VideoPromptEncoderConfig

    hidden = 128
    hiera = Sam2HieraDetConfig(
        hidden_size=8,
        num_attention_heads=1,
        blocks_per_stage=[1, 2, 1, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[2, 2, 2, 2],
        global_attention_blocks=[2],
        window_positional_embedding_background_size=[2, 2],
        image_size=[64, 64],
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=hidden,
    )
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(
            hidden_size=hidden, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
        ),
        image_size=64,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=32,
        num_maskmem=2,
        memory_attention_rope_feat_sizes=[4, 4],
    )


def save_tiny_sam2(folder: Path) -> Path:
    """A random tiny SAM 2 video model and its processor (64 px), saved as a checkpoint folder."""
    import torch
    from transformers import Sam2ImageProcessor, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    torch.manual_seed(0)
    Sam2VideoModel(tiny_sam2_config()).save_pretrained(folder)
    size = {"height": 64, "width": 64}
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size={"height": 16, "width": 16}),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def test_sam2_loads_a_saved_checkpoint_and_says_when_it_cannot(tmp_path):
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    from editing.masks.sam2 import load_sam2

    model, processor = load_sam2(str(save_tiny_sam2(tmp_path / "sam2")))
    assert isinstance(model, Sam2VideoModel) and isinstance(processor, Sam2VideoProcessor) and not model.training
    with pytest.raises(ConfigError, match=r"^mask_model no-such-owner/sam2 cannot be loaded .*--mask-track flow"):
        load_sam2("no-such-owner/sam2")


def test_sam2_tracks_a_drawn_mask_through_the_clip(tmp_path, clip, monkeypatch):
    from collections import Counter

    from PIL import Image
    from transformers import Sam2VideoProcessor

    from editing.masks import sam2
    from editing.region import clip_mask

    calls = []  # (frame, SAM 2's mask logits) of every call of the model
    load = sam2.load_sam2

    def load_and_watch(spec, device="cpu"):
        model, processor = load(spec, device)
        model.register_forward_hook(
            lambda module, args, kwargs, out: calls.append((out.frame_idx, out.pred_masks)), with_kwargs=True
        )
        return model, processor

    monkeypatch.setattr(sam2, "load_sam2", load_and_watch)
    frames, drawn = clip.frames[:4, 8:56], clip.masks[2, 0, 8:56]  # 48 x 64: height and width differ
    Image.fromarray(drawn.astype(np.uint8) * 255).save(tmp_path / "drawn.png")
    folder = save_tiny_sam2(tmp_path / "sam2")
    config = MaskConfig(
        mask=f"{tmp_path / 'drawn.png'}@2", mask_track="sam2", mask_model=str(folder), region=True, mask_grow=2, mask_feather=3
    )
    assert config.source == "sam2"
    made = clip_mask(frames, EditParts(EditConfig(prompt="a star"), masking=config))

    assert made.masks.shape == frames.shape[:3] and made.masks.dtype == bool
    assert Counter(frame for frame, _ in calls) == {0: 1, 1: 1, 2: 2, 3: 1}  # every frame; the prompt's by both passes
    assert np.array_equal(made.masks[2], drawn)  # a mask prompt is SAM 2's own output on its frame: kept exactly
    processor = Sam2VideoProcessor.from_pretrained(folder)
    for frame, logits in calls:
        if frame != 2:  # the other frames are the model's masks at the frame's size
            expected = processor.post_process_masks([logits], original_sizes=[frames.shape[1:3]], binarize=True)[0][0, 0]
            assert np.array_equal(made.masks[frame], expected.numpy())
    assert np.array_equal(made.grown, grown(made.masks, 2)) and np.array_equal(made.weights, feathered(made.grown, 3))


@pytest.mark.real_weights
def test_sam2_tracks_a_shape_with_real_weights(clip):
    from editing.masks.options import DEFAULT_SAM_MODEL
    from editing.masks.sam2 import load_sam2, track_with_sam2

    model, processor = load_sam2(DEFAULT_SAM_MODEL)
    truth = clip.masks[:, 0]
    tracked = track_with_sam2(model, processor, clip.frames, truth[0], 0)
    assert np.mean([mask_iou(a, b) for a, b in zip(tracked, truth)]) >= 0.8


def test_inpainting_model_offline_error(tiny):
    from editing.removal import load_inpainting

    with pytest.raises(ConfigError, match=r"^inpaint_model no-such-owner/inpainting cannot be loaded"):
        load_inpainting("no-such-owner/inpainting", tiny)


def test_words_mask_finds_the_named_object_with_shapes(clip):
    from editing.masks import MaskInputs, clip_masks
    from editing.models import load_backbone

    shapes = load_backbone("shapes", device="cpu")
    first = clip.scene.objects[0]
    config = MaskConfig(mask_words=f"{first.colour} {first.shape}", region=True)
    masks = clip_masks(MaskInputs(clip.frames[:4], config, shapes, None, "a star", clip.caption))
    assert np.mean([mask_iou(a, b) for a, b in zip(masks, clip.masks[:4, 0])]) >= 0.7
    with pytest.raises(ConfigError, match="words needs the model"):
        clip_masks(MaskInputs(clip.frames[:2], config))


def test_words_mask_leaves_out_the_neighbour_the_attention_spills_onto():
    """Pan clip 9, "red circle" beside a blue circle on stripes: in most frames the snapped attention also
    takes in the blue circle or a stripe (mean IoU 0.71 frame by frame); the tightest frame's mask carried
    along the flow holds the red circle alone in every frame."""
    from editing.masks import MaskInputs, clip_masks
    from editing.models import load_backbone

    clip = benchmark_clip(9)
    config = MaskConfig(mask_words="red circle", region=True)
    masks = clip_masks(MaskInputs(clip.frames, config, load_backbone("shapes", device="cpu"), None, "a circle", clip.caption))
    assert min(mask_iou(a, b) for a, b in zip(masks, clip.masks[:, 0])) >= 0.9


@pytest.mark.parametrize("index", [6, 17])
def test_words_mask_reads_the_phrase_not_every_occurrence_of_its_noun(index):
    """Occlusion clip 6 ("a blue square and a green square") and pan clip 17 (two hexagons): the mask of
    "green square" read the attention of both "square" tokens and took in the other square (all of it in
    every frame); the tokens of the words in a row name one object."""
    from editing.masks import MaskInputs, clip_masks
    from editing.models import load_backbone
    from shapes_world.benchmark import derive_edits

    clip = benchmark_clip(index)
    edit = derive_edits(clip)[0]
    subject, other = clip.masks[:, edit.subject], clip.masks[:, 1 - edit.subject]
    words = clip.scene.objects[edit.subject].phrase().split(" ", 1)[1]
    config = MaskConfig(mask_words=words, region=True)
    masks = clip_masks(
        MaskInputs(clip.frames, config, load_backbone("shapes", device="cpu"), None, edit.prompt, edit.source_prompt)
    )
    assert not (masks & other).any()
    assert np.mean([mask_iou(a, b) for a, b in zip(masks, subject)]) >= 0.9


def test_phrase_positions_pick_the_words_in_a_row():
    from editing.models import load_backbone
    from editing.prompts import phrase_positions, word_positions

    tokenizer = load_backbone("tiny").tokenizer
    prompt = "a blue square and a green square"
    assert phrase_positions(tokenizer, prompt, "green square") == word_positions(tokenizer, prompt, "green") + [7]
    assert phrase_positions(tokenizer, prompt, "square") == word_positions(tokenizer, prompt, "square") == [3, 7]
    assert phrase_positions(tokenizer, prompt, "red square") == [3, 7]  # no whole phrase: each word that occurs


def test_region_tab_tracks_a_drawing_and_removes(tmp_path, tiny, clip):
    from ui.backend import Backend
    from ui.region_tab import make_handlers

    video = write_lossless(tmp_path / "clip.mp4", clip.frames[:4])
    layer = np.zeros((*clip.frames.shape[1:3], 4), np.uint8)
    layer[clip.masks[0, 0]] = (255, 40, 200, 255)  # painted over the first object on frame 0
    drawing = {"background": clip.frames[0], "layers": [layer], "composite": clip.frames[0]}
    track, _, remove = make_handlers(Backend(output_root=tmp_path / "outputs"))
    overlay = track(str(video), drawing, None, "shapes", 0, 0)  # the shapes model reads the clip at its own 64 px
    assert overlay.endswith(".mp4") and (tmp_path / "outputs") in Path(overlay).parents
    with pytest.raises(gr.Error) as refused:  # SAM 2 from the Hub, offline here
        track(str(video), drawing, None, "shapes", 0, 0, "sam2")
    assert refused.value.message.startswith("mask_model facebook/sam2.1-hiera-tiny cannot be loaded")
    values = {
        "video": str(video),
        "drawing": drawing,
        "upload": None,
        "model": "shapes",
        "prompt": "a green background",
        "grow": 0,
        "feather": 0,
        "token": None,
    }
    shown, details = asyncio.run(remove(**values, progress=None))
    assert Path(shown).exists() and details["frames"] == 4


def test_the_staged_keyframes_flow_refuses_a_mask():
    from editing.pipeline import edit_keyframes_of
    from editing.requests import defaults, edit_request

    values = defaults("edit") | {
        "video": "clip.mp4",
        "out": "out.mp4",
        "prompt": "a star",
        "model": "tiny",
        "mask": "m.mp4",
        "region": True,
    }
    with pytest.raises(ConfigError, match="runs as one edit"):
        edit_keyframes_of(edit_request(values))


def test_a_region_edit_draws_the_named_object_in_its_mask(tmp_path):
    """Pan clip 9, edited as the region benchmark does: "a yellow circle" inside the red circle's mask. Held
    from the first step, the region was filled with the striped background (accuracy 0); the first quarter
    of the steps is left free."""
    from editing.models import load_backbone
    from shapes_world.benchmark import derive_edits, edit_accuracy
    from shapes_world.regions import run_edit

    clip = benchmark_clip(9)
    edit = derive_edits(clip)[0]
    values = {"prompt": edit.prompt, "inversion_prompt": edit.source_prompt, "steps": 20, "region": True}
    values |= {"mask": mask_video(tmp_path / "mask.mp4", clip.masks[:, edit.subject]), "mask_grow": 1, "mask_feather": 2}
    out = run_edit(clip, values, load_backbone("shapes", device="cpu")).frames
    assert edit_accuracy(out, clip.masks, edit) >= 0.75


def test_a_region_follows_its_own_motion_not_the_flow_a_neighbour_smooths_into_it():
    """Occlusion clip 10: a still hexagon (the region) in front of a circle passing behind it. DIS smooths
    the circle's motion over the hexagon's edge and flat inside; `within_region` gives the region its own
    motion (still here) and keeps the flow outside it."""
    from editing.keyframes import clip_flows, within_region

    clip = benchmark_clip(10)
    region = clip.masks[:, 1]
    assert not np.abs(clip.flow[region[:-1]]).any()  # the hexagon stands still
    flows = clip_flows(clip.frames)
    steered = within_region(flows, region, clip.frames)
    shown = region[1:] & region[:-1]  # hexagon pixels shown in both frames of a pair
    moving = lambda flow: int((np.abs(flow[shown]).max(-1) > 0.75).sum())  # noqa: E731
    assert moving(flows.backward) >= 100  # the circle's motion, smoothed into the hexagon (206 pixel-pairs)
    assert moving(steered.backward) * 5 <= moving(flows.backward)  # 17: edge pixels the circle's colour mixes into
    assert moving(steered.forward) * 5 <= moving(flows.forward)
    outside = ~region[1:]
    assert np.array_equal(steered.backward[outside], flows.backward[outside])
    assert np.array_equal(steered.backward_valid[outside], flows.backward_valid[outside])


def test_a_region_edit_keeps_a_still_region_still_beside_a_moving_neighbour(tmp_path, monkeypatch):
    """Occlusion clip 10 edited as the region benchmark does ("a yellow hexagon" inside the still orange
    hexagon's mask, a circle passing behind it): propagated along DIS's flow, the hexagon's edge took the
    circle's motion and changed from frame to frame; along the region's own motion it changes less than
    half as much (the same edit with the flows left as DIS made them is the control)."""
    import editing.keyframes
    from editing.models import load_backbone
    from shapes_world.benchmark import derive_edits
    from shapes_world.regions import run_edit

    clip = benchmark_clip(10)
    edit = derive_edits(clip)[0]
    hexagon = clip.masks[:, edit.subject]
    shown = hexagon[1:] & hexagon[:-1]
    values = {"prompt": edit.prompt, "inversion_prompt": edit.source_prompt, "steps": 20, "region": True}
    values |= {"mask": mask_video(tmp_path / "mask.mp4", hexagon), "mask_grow": 1, "mask_feather": 2}
    backbone = load_backbone("shapes", device="cpu")

    def change() -> float:
        out = run_edit(clip, dict(values), backbone).frames.astype(np.float32)
        return float(np.abs(out[1:] - out[:-1]).mean(-1)[shown].sum())

    steered = change()
    monkeypatch.setattr(editing.keyframes, "within_region", lambda flows, region, frames: flows)
    assert steered <= 0.6 * change()
