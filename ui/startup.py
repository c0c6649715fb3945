"""Which model the app starts on: the one asked for when it can be had without downloading first (in the
local Hugging Face cache, or the Hub answers within a short timeout), else the shapes model, with one line
saying why (in the terminal and on the page), so that the first click works offline."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from editing.errors import EditingError
from editing.models import SHAPES_MODEL, ModelSpec

log = logging.getLogger(__name__)

HUB_TIMEOUT = 2.5  # seconds the Hub has to answer at start-up
TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether the environment forbids the Hub (HF_HUB_OFFLINE, or transformers' TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def in_hub_cache(repo_id: str, cache_dir: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds the model's index (diffusers then loads it offline)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir)
    return isinstance(found, str) and os.path.isfile(found)


def hub_answers(repo_id: str, timeout: float = HUB_TIMEOUT) -> bool:
    """Whether the Hub answers a HEAD request for the model within `timeout` seconds (any answer but a
    server error: a missing or gated model is then said by the load itself). Nothing is downloaded."""
    import httpx
    from huggingface_hub import constants

    answered: list[bool] = []

    def ask() -> None:
        try:
            answered.append(
                httpx.head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=timeout, follow_redirects=True).status_code < 500
            )
        except Exception:  # no network, no DNS, a proxy refusing: the Hub cannot be had
            answered.append(False)

    asking = threading.Thread(target=ask, daemon=True)  # name resolution is not bounded by httpx's timeout
    asking.start()
    asking.join(timeout + 0.5)
    return bool(answered and answered[0])


def model_available(spec: str) -> bool:
    """Whether `spec` can be loaded without first waiting on a download that cannot happen: anything that is
    not a Hub id (built-in names, local folders and files: their own errors are said when loaded), a Hub
    model in the local cache, or one the Hub answers for (unless HF_HUB_OFFLINE)."""
    try:
        parsed = ModelSpec.parse(spec)
    except EditingError:
        return True  # not a model at all: the Model box says why on the first run
    if parsed.kind != "hub":
        return True
    return in_hub_cache(parsed.source) or (not hub_offline() and hub_answers(parsed.source))


def first_model(requested: str, available: Callable[[str], bool] = model_available) -> tuple[str, str | None]:
    """The Model box's first value and, when `requested` cannot be had, the one line that says so (also logged)."""
    if requested == SHAPES_MODEL or available(requested):
        return requested, None
    notice = (
        f"{requested} is not in this machine's Hugging Face cache and the Hub cannot be reached, so the app starts on "
        f"the shapes model (it works offline, for scenes of coloured shapes): try its examples."
    )
    log.warning(notice)
    return SHAPES_MODEL, notice
