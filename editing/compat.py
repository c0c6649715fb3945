"""Which features of an edit combine: every capability declares what it needs and what it excludes, and
`check` reads the declarations and refuses a combination in one sentence.

Features are named strings ("tuned", "feature-bank", "attention tokenflow", "sampler lcm", ...). The
fixed ones are declared here; an attention mode and a sampler declare theirs in their registration
(`AttentionMode.needs` / `excludes`, a mode with its own attention control excluding every other control;
a sampler on its own timeline excluding DDIM inversion). The same declarations say which features keep
an edit's chunks on one worker (`sequential`) and which turn the default keyframes off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .attention.modes import ATTENTION_MODES, AttentionMode
from .errors import ConfigError
from .samplers import SAMPLERS, Sampler
from .stepcache import STEP_CACHES, parse_step_caches
from .windows import ContextWindows

# the controls a mode with its own attention control replaces (one control installs the processors)
OWN_CONTROL_EXCLUDES = ("tuned", "feature-bank", "attention-edit")


@dataclass(frozen=True)
class Rule:
    """One feature another needs or excludes, and why (said after the refusal, may be empty)."""

    feature: str
    why: str = ""


@dataclass(frozen=True)
class Declaration:
    """What one feature needs, excludes, and how it changes how an edit runs."""

    feature: str
    label: str  # how a refusal names it
    needs: tuple[Rule, ...] = ()
    excludes: tuple[Rule, ...] = ()
    sequential: str = ""  # why an edit with it cannot split its chunks across workers ('' = it can)
    keyframes_off: bool = False  # --keyframes left out: edit every frame instead of the default keyframes
    keeps: tuple[str, ...] = ()  # options a preset leaves as they are (the tuned model's attention)
    help: str = field(default="", compare=False)


DECLARATIONS: dict[str, Declaration] = {}


def declare(declaration: Declaration) -> Declaration:
    """Add a feature's declaration; a feature is declared once."""
    if declaration.feature in DECLARATIONS:
        raise ValueError(f"the feature '{declaration.feature}' is already declared")
    DECLARATIONS[declaration.feature] = declaration
    return declaration


def mode_declaration(mode: AttentionMode) -> Declaration:
    """An attention mode's declaration: its own needs and excludes, plus, with its own attention control,
    every other control's exclusion."""
    excludes = tuple(Rule(f) for f in mode.excludes)
    if mode.make_control is not None:
        excludes += tuple(Rule(f) for f in OWN_CONTROL_EXCLUDES if f not in mode.excludes)
    return Declaration(
        f"attention {mode.name}",
        f"attention {mode.name}",
        needs=tuple(Rule(*need) if isinstance(need, tuple) else Rule(need) for need in mode.needs),
        excludes=excludes,
        sequential="" if mode.independent_chunks else f"attention {mode.name} needs the context of neighbouring chunks",
        keyframes_off=not mode.default_keyframes,
    )


def sampler_declaration(sampler: Sampler) -> Declaration:
    """A sampler's declaration: one on its own timeline cannot sample a DDIM inversion back."""
    timeline = sampler.settings.get("timestep_spacing", "leading")
    why = "it steps on its own timesteps, not DDIM inversion's; use --inversion none (SDEdit)"
    excludes = () if timeline == "leading" else (Rule("ddim-inversion", why),)
    return Declaration(f"sampler {sampler.name}", f"sampler {sampler.name}", excludes=excludes)


def declaration(feature: str) -> Declaration:
    """The declaration of a fixed feature, a registered attention mode or a registered sampler."""
    if feature in DECLARATIONS:
        return DECLARATIONS[feature]
    kind, _, name = feature.partition(" ")
    if kind == "attention" and name in ATTENTION_MODES:
        return mode_declaration(ATTENTION_MODES[name])
    if kind == "sampler" and name in SAMPLERS:
        return sampler_declaration(SAMPLERS[name])
    if kind == "step-cache" and name in STEP_CACHES:  # a step cache declares its exclusions in its registration
        return Declaration(feature, f"step_cache {name}", excludes=tuple(Rule(*rule) for rule in STEP_CACHES[name].excludes))
    return Declaration(feature, feature)


def features(
    engine: Any = None,  # editing.config's EngineConfig, EditConfig and AttentionEditConfig (config imports this module)
    edit: Any = None,
    attention_edit: Any = None,
    tuned: str | None = None,
) -> list[str]:
    """The features an edit uses, in the order refusals and reasons are looked for; parts not given add none."""
    found = []
    if engine is not None:
        keyframes = engine.keyframes_every
        found += ["keyframes"] * bool(keyframes) + ["keyframe-image"] * bool(engine.keyframe_images)
        found += ["feature-bank"] * bool(engine.feature_bank)
        found.append(f"attention {engine.attention}")
        found += ["cross-frame"] * ATTENTION_MODES[engine.attention].cross_frame if engine.attention in ATTENTION_MODES else []
        found += ["smooth-flow"] * bool(engine.smooth_flow) + ["token-merge"] * bool(engine.token_merge)
        found += [f"step-cache {spec.kind}" for spec in parse_step_caches(engine.step_cache)]
        found += ["context-windows"] * (ContextWindows.parse(engine.context) is not None)
        found.append("ddim-inversion" if engine.inversion == "ddim" else "sdedit")
    if attention_edit is not None:
        found.append("attention-edit")
        found += ["null-text"] * bool(attention_edit.null_text)
    if tuned is not None:
        found.append("tuned")
    if engine is not None and any(control.video for control in engine.controls):
        found.append("control-video")
    if edit is not None:
        found.append(f"sampler {edit.sampler}")
        found += ["guidance"] * bool(edit.uses_guidance)
    return found


def features_of(request: Any) -> list[str]:
    """The features of an EditRequest or the core's EditParts."""
    options = getattr(request, "model_options", None)  # an EditRequest's; the core's parts are past loading
    motion = ["motion-adapter"] * bool(options is not None and options.motion_adapter)
    masking = getattr(request, "masking", None)  # editing.masks.MaskConfig (the core's parts hold None without a mask)
    masked = [] if masking is None else ["region"] * masking.region + ["remove"] * masking.remove
    return motion + masked + features(request.engine, request.edit, request.attention_edit, request.tuned)


def refusal(found: list[str]) -> str | None:
    """The one sentence refusing the first feature whose needs are missing or whose exclusions are present."""
    present = set(found)
    for feature in found:
        declared = declaration(feature)
        for need in declared.needs:
            if need.feature not in present:
                return _sentence(f"{declared.label} needs {declaration(need.feature).label}", need.why)
        clashing = [rule for rule in declared.excludes if rule.feature in present]
        if clashing:
            names = " or ".join(declaration(rule.feature).label for rule in clashing)
            why = "; ".join(rule.why for rule in clashing if rule.why) or "yet"
            return _sentence(f"{declared.label} cannot be combined with {names}", why)
    return None


def _sentence(head: str, why: str) -> str:
    if not why:
        return head
    if why == "yet" or why.startswith("not "):
        return f"{head} {why}" if why == "yet" else f"{head}, {why}"
    return f"{head}: {why}"


def check(request: Any) -> None:
    """Refuse, in one sentence, a request (or the core's parts) combining features that do not combine."""
    message = refusal(features_of(request))
    if message is not None:
        raise ConfigError(message)


def sequential_reason(request: Any) -> str:
    """Why an edit's chunks cannot run apart on several workers ('' when they can)."""
    for feature in features_of(request):
        reason = declaration(feature).sequential
        if reason:
            return reason
    return ""


def option_features(values: Mapping[str, Any]) -> list[str]:
    """The features option values (CLI names, before defaults are resolved) name: the attention mode, a
    tuned model, a condition video, a feature bank and attention editing."""
    found = [f"attention {values.get('attention') or 'first'}"]
    found += ["tuned"] * (values.get("tuned") is not None) + ["control-video"] * any(values.get("control_video") or ())
    found += ["feature-bank"] * ((values.get("feature_bank") or 0) > 0) + ["attention-edit"] * bool(values.get("source_prompt"))
    found += ["motion-adapter"] * bool(values.get("motion_adapter"))
    return found


def keyframes_by_default(values: Mapping[str, Any]) -> bool:
    """Whether an edit with these option values gets the default keyframes when --keyframes is left out:
    not when any of its features turns them off."""
    return not any(declaration(feature).keyframes_off for feature in option_features(values))


def kept_options(values: Mapping[str, Any]) -> set[str]:
    """The options a preset leaves as they are for an edit with these option values (a tuned model keeps
    the attention it was tuned with, and so no feature bank)."""
    return {option for feature in option_features(values) for option in declaration(feature).keeps}


_CANNOT_SPLIT_WHOLE = "runs on the whole clip"
declare(
    Declaration(
        "keyframes",
        "keyframes",
        excludes=(Rule("tuned"), Rule("control-video")),
        sequential="a preview of keyframes then propagation runs as one task",
    )
)
declare(
    Declaration(
        "keyframe-image",
        "keyframe_image",
        excludes=(Rule("tuned"), Rule("attention-edit")),
        sequential="a --keyframe-image without --keyframes is followed along the whole clip's flow",
    )
)
declare(
    Declaration(
        "feature-bank",
        "feature_bank",
        needs=(Rule("cross-frame", "not --attention none"),),
        excludes=(Rule("tuned"), Rule("attention-edit")),
        sequential="the feature bank carries each chunk's keys and values into the next",
        keyframes_off=True,
    )
)
declare(Declaration("cross-frame", "cross-frame attention"))
declare(
    Declaration(
        "motion-adapter",
        "--motion-adapter",
        excludes=(Rule("tuned", "the tuned weights were made for the image UNet's attention layers"),),
        sequential="the motion module attends over the frames of each window together",
        keyframes_off=True,  # it denoises runs of consecutive frames, not keyframes 8 apart
    )
)
declare(
    Declaration(
        "context-windows",
        "context windows (--context)",
        excludes=(
            Rule("attention tokenflow", "it plans its own keyframe windows"),
            Rule("feature-bank", "it streams chunk after chunk"),
        ),
        sequential="context windows blend the overlaps of neighbouring windows at every step",
    )
)
declare(Declaration("smooth-flow", "flow smoothing", sequential="flow smoothing fuses neighbouring frames"))
declare(Declaration("token-merge", "token_merge", excludes=(Rule("attention-edit", "it changes the stored attention maps"),)))
declare(Declaration("ddim-inversion", "--inversion ddim"))
declare(Declaration("sdedit", "--inversion none"))
declare(
    Declaration(
        "attention-edit",
        "attention editing (--source-prompt)",
        needs=(Rule("ddim-inversion"),),
        sequential=f"attention editing (--source-prompt) {_CANNOT_SPLIT_WHOLE}",
        keyframes_off=True,
    )
)
declare(
    Declaration(
        "null-text",
        "null-text inversion",
        needs=(Rule("guidance"), Rule("sampler ddim", "it fits DDIM steps")),
        excludes=(Rule("tuned", "it installs its own attention processors"),),
    )
)
declare(Declaration("guidance", "guidance above 1"))
declare(
    Declaration(
        "tuned",
        "--tuned",
        needs=(Rule("cross-frame", "use --attention sparse-causal, the mode it was tuned with"),),
        sequential=f"a tuned model {_CANNOT_SPLIT_WHOLE}",
        keyframes_off=True,
        keeps=("attention", "feature_bank"),
    )
)
declare(
    Declaration(
        "control-video", "a --control-video", sequential="a condition video is read for the whole clip", keyframes_off=True
    )
)
declare(Declaration("region", "--region", sequential=f"a region's mask {_CANNOT_SPLIT_WHOLE}"))
declare(
    Declaration(
        "remove",
        "--remove",
        excludes=(
            Rule("attention-edit", "removal makes background, it keeps no source attention"),
            Rule("tuned", "removal fills from the clip and diffuses with the backbone"),
        ),
        sequential=f"removal {_CANNOT_SPLIT_WHOLE}",
    )
)
