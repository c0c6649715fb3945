"""The first look, timed in a real browser: seconds from a click on "Preview first frame" or "Fast preview" to
the edited image showing, with the shapes model.

The app starts on `shapes`, and the test picks a shapes example. It then records four clicks:
1. "Preview first frame" on the first clip: the click that loads the model.
2. "Preview first frame" on the other clip: the model loaded, the clip not yet inverted.
3. "Fast preview" on that clip: the first run of the shapes LCM-LoRA, which loads it.
4. "Fast preview" again, with another prompt: the LoRA loaded.

A preview counts as shown when its image has loaded in the page. For a Fast preview, that is the edited
clip ready to play and its before/after images. The seconds, the page's settings and the machine's load
average go to first-look.json beside the screenshots: in a tmp dir, or in BROWSER_SCREENS=DIR.

Run it alone, in a fresh process: `FIRST_LOOK_BROWSER=1 pytest tests/test_first_look_browser.py -s`. The app
starts as app.py starts it: the first edit's imports begin in the background at launch. The JSON says how long
after launch the first click came and whether diffusers was imported before launch (then the first click
measures no import). FIRST_LOOK_IMPORTS=click leaves the imports to the first click, and
FIRST_LOOK_IMPORTS=done waits for them before the page opens (a user who looks at the page first).

The targets are 3 s with the model loaded and 8 s including the first load. They are asserted only with
FIRST_LOOK_TARGETS=1, on an idle machine. On a shared CPU the seconds measure the neighbours too, so the test
records them and asserts only that each image shows."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.test_browser import _free_port, _wait_for, chromium_driver

pytestmark = pytest.mark.skipif(
    os.environ.get("FIRST_LOOK_BROWSER") != "1", reason="starts a browser and the app: set FIRST_LOOK_BROWSER=1 to run it"
)
WAIT = 300  # seconds for one click's image on a busy 2-core CPU (the first includes the model load)
POLL = 0.05  # seconds between looks at the page while a click is timed
LOADED_TARGET, FIRST_LOAD_TARGET = 3.0, 8.0  # seconds


@pytest.fixture(scope="module")
def first_look_url():
    """The app started as app.py starts it (the first edit's imports begin in the background), and when."""
    from editing.models import import_in_background
    from ui import build_demo

    imported = "diffusers" in sys.modules
    demo = build_demo(default_model="shapes")
    port = _free_port()
    imports = os.environ.get("FIRST_LOOK_IMPORTS", "background")
    if imports not in ("background", "click", "done"):
        raise ValueError(f"FIRST_LOOK_IMPORTS must be background, click or done, got {imports!r}")
    if imports != "click":
        thread = import_in_background()
        if imports == "done":
            thread.join()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", time.perf_counter(), imports, imported
    finally:
        demo.close()


@pytest.fixture(scope="module")
def driver():
    browser = chromium_driver()
    try:
        yield browser
    finally:
        browser.quit()


def _preview_image(driver) -> str | None:
    """The src of the first-frame preview once its image has loaded, else None."""
    return driver.execute_script(
        "const i = document.querySelector('#first-frame img');"
        "return i && i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : null"
    )


def _fast_result(driver) -> str | None:
    """The edited clip's src once it can show a frame and the before/after images have loaded, else None."""
    return driver.execute_script(
        "const v = document.querySelector('#edited-video video');"
        "const shown = [...document.querySelectorAll('#compare img')].filter(i => i.complete && i.naturalWidth > 0);"
        "return v && v.currentSrc && v.readyState >= 2 && shown.length == 2 ? v.currentSrc : null"
    )


def _timed_click(driver, button_id: str, shown, before: str | None) -> tuple[float, str]:
    """Seconds from clicking `button_id` until `shown(driver)` gives something other than `before`."""
    button = _wait_for(lambda: [b for b in driver.find_elements("id", button_id) if b.is_enabled()], f"{button_id} enabled")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    start = time.perf_counter()
    button.click()
    deadline = start + WAIT
    while time.perf_counter() < deadline:
        now = shown(driver)
        if now and now != before:
            return time.perf_counter() - start, now
        time.sleep(POLL)
    raise AssertionError(f"no new image {WAIT} s after clicking {button_id}")


def _pick_example(driver, clip: str) -> None:
    """Click a shapes example and wait until the page has taken its clip, prompt and size."""
    from editing.models import native_size
    from ui.widgets import SHAPES_EXAMPLES

    prompt = SHAPES_EXAMPLES[clip]
    cell = _wait_for(
        lambda: [e for e in driver.find_elements("xpath", f"//td[.//*[normalize-space(text())='{prompt}']]") if e.is_displayed()],
        f"the {clip} example",
    )[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.click()
    _wait_for(lambda: driver.find_element("css selector", "#prompt textarea").get_attribute("value") == prompt, "its prompt")
    size = driver.find_element("css selector", ".size input[type=number]")
    _wait_for(lambda: size.get_attribute("value") == str(native_size("shapes")), "the shapes model's size")
    _wait_for(lambda: clip.split(".")[0] in (driver.execute_script(_SOURCE) or ""), "its clip")


_SOURCE = "const v = document.querySelector('#source-video video'); return v && v.currentSrc"


def test_the_first_look_shows_within_seconds(driver, first_look_url, tmp_path):
    from ui.widgets import SHAPES_EXAMPLES

    url, launched, imports, imported = first_look_url
    screens = Path(os.environ.get("BROWSER_SCREENS") or tmp_path)
    screens.mkdir(parents=True, exist_ok=True)
    first_clip, second_clip = list(SHAPES_EXAMPLES)
    load_before = os.getloadavg()
    driver.get(url)
    rows = []

    _pick_example(driver, first_clip)
    first_click_after_launch = time.perf_counter() - launched
    seconds, image = _timed_click(driver, "run-preview", _preview_image, None)
    rows.append({"click": "Preview first frame", "clip": first_clip, "model": "loads", "seconds": round(seconds, 2)})
    driver.save_screenshot(str(screens / "first-look-preview-cold.png"))

    _pick_example(driver, second_clip)
    seconds, image = _timed_click(driver, "run-preview", _preview_image, image)
    rows.append({"click": "Preview first frame", "clip": second_clip, "model": "loaded", "seconds": round(seconds, 2)})
    driver.save_screenshot(str(screens / "first-look-preview-loaded.png"))

    seconds, result = _timed_click(driver, "run-fast-preview", _fast_result, None)
    rows.append({"click": "Fast preview", "clip": second_clip, "model": "LoRA loads", "seconds": round(seconds, 2)})
    prompt = driver.find_element("css selector", "#prompt textarea")
    prompt.clear()
    prompt.send_keys("a blue square on a striped orange background")
    seconds, _ = _timed_click(driver, "run-fast-preview", _fast_result, result)
    rows.append({"click": "Fast preview", "clip": second_clip, "model": "loaded", "seconds": round(seconds, 2)})
    driver.execute_script("document.querySelector('#compare').scrollIntoView({block: 'center'})")
    driver.save_screenshot(str(screens / "first-look-fast.png"))

    settings = {
        name: driver.find_element("css selector", f".{name} input[type=number]").get_attribute("value")
        for name in ("frames", "size")
    }
    record = {
        "rows": rows,
        "settings": settings,
        "imports": imports,
        "diffusers_imported_before_launch": imported,
        "first_click_seconds_after_launch": round(first_click_after_launch, 2),
        "poll_seconds": POLL,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "targets_seconds": {"model loaded": LOADED_TARGET, "including the first load": FIRST_LOAD_TARGET},
    }
    (screens / "first-look.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    assert all(row["seconds"] > 0 for row in rows)
    if os.environ.get("FIRST_LOOK_TARGETS") == "1":
        loads = {"loads", "LoRA loads"}
        assert all(r["seconds"] <= (FIRST_LOAD_TARGET if r["model"] in loads else LOADED_TARGET) for r in rows), rows
