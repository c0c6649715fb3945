"""A real browser (Debian's headless chromium via Selenium) meets the app as a new user would: each tab loads,
an uploaded clip edits with `tiny` and plays, the shapes example edits with the shapes model and compares
before/after, Stop during an edit says where it stopped and keeps the last result, a clip browsers cannot
play shows through its H.264 preview, and a bad file is said once.

Every tab takes its clip through the same upload (ui/clip_upload.py), so the preview and the bad-file
message are checked in each; retyping the Frames box gives a hint, not Gradio's red Error badge.

Screenshots go to the `screens` folder each test names (a tmp dir; set BROWSER_SCREENS=DIR to keep copies)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from editing.config import FrameSelection
from editing.video_io import plan_frames, probe

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 180  # seconds for the upload, the edit (tiny, 4 frames, 2 steps) and playback on a busy 2-core CPU
WINDOW = (1400, 1000)  # a laptop's window: what is "near the top" is what shows in it without scrolling


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_driver(*flags: str):
    """Debian's headless chromium through chromedriver, with these extra flags (skips where either is missing)."""
    if not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (in requirements.lock)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver("--autoplay-policy=no-user-gesture-required")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def app_url():
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def screens(tmp_path):
    """Where a test's screenshots go; shot(name) saves one there (and a copy under $BROWSER_SCREENS)."""
    folder = tmp_path / "screens"
    folder.mkdir()
    keep = os.environ.get("BROWSER_SCREENS")

    def shot(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        print(f"screenshot: {path}")
        assert path.stat().st_size > 10_000
        return path

    return shot


def _set_number(driver, css: str, value: int) -> None:
    """Type a value into a slider's number box, as a person would."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("css selector", css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _text(driver, element_id: str) -> str:
    found = driver.find_elements("id", element_id)
    return found[0].text if found else ""


def _toasts(driver) -> list[str]:
    return [t.text for t in driver.find_elements("css selector", ".toast-body") if t.is_displayed()]


# Each tab: the prefix of its upload's element ids (source-file, source-video, frame-plan) and the button
# that runs on the uploaded clip.
TABS = {
    "Edit": ("", "run-edit"),
    "Style sessions": ("session-", "session-create"),
    "One-shot tuning": ("oneshot-", "oneshot-tune"),
}


def _open_tab(driver, tab: str) -> None:
    if tab != "Edit":
        tabs = lambda: [
            button
            for button in driver.find_elements("xpath", f"//button[@role='tab' and normalize-space()='{tab}']")
            if button.is_displayed()
        ]  # noqa: E731
        _wait_for(tabs, f"the {tab} tab's button")[0].click()
    _wait_for(
        lambda: [e for e in driver.find_elements("id", f"{TABS[tab][0]}source-file") if e.is_displayed()],
        f"the {tab} tab's upload",
    )


def _upload(driver, path: Path, prefix: str = "") -> None:
    css = f"#{prefix}source-file input[type=file]"
    _wait_for(lambda: driver.find_elements("css selector", css), "the upload box")
    driver.find_element("css selector", css).send_keys(str(path))


def _error_badges(driver) -> list:
    """Gradio's red "Error" badges on the page (an event that failed marks each of its outputs)."""
    return [e for e in driver.find_elements("xpath", "//*[normalize-space(text())='Error']") if e.is_displayed()]


def _playing(driver, element_id: str):
    """[width, height] of the element's video once it plays, else False."""
    return driver.execute_script(
        f"const v = document.querySelector('#{element_id} video'); if (!v || !v.currentSrc) return false; v.muted = true;"
        "if (v.paused) v.play().catch(() => {}); return v.readyState >= 2 && v.currentTime > 0 && [v.videoWidth, v.videoHeight];"
    )


def _edit_enabled(driver, button_id: str = "run-edit") -> bool:
    button = _wait_for(lambda: driver.find_elements("id", button_id), f"the {button_id} button")[0]
    return button.is_enabled()


def _small_edit_settings(driver, frames: int, size: int, steps: int) -> None:
    _set_number(driver, ".frames input[type=number]", frames)
    _set_number(driver, ".size input[type=number]", size)
    if (
        not driver.find_elements("css selector", ".steps input[type=number]")
        or not driver.find_element("css selector", ".steps input[type=number]").is_displayed()
    ):
        driver.find_element("css selector", "#sampler button").click()  # open the Sampler accordion
    _wait_for(lambda: driver.find_elements("css selector", ".steps input[type=number]"), "the Steps slider")
    _set_number(driver, ".steps input[type=number]", steps)


def test_each_tab_loads_with_its_steps_in_order(browser, app_url, screens):
    """The page opens on the Edit tab with the examples in the first screenful; every tab shows its widgets;
    the One-shot tab's step 1 is above its step 2."""
    driver = browser
    driver.get(app_url)
    examples = _wait_for(
        lambda: [e for e in driver.find_elements("css selector", "#examples-shapes") if e.is_displayed()], "the examples"
    )
    assert examples[0].location["y"] < WINDOW[1] * 0.6  # near the top: no scrolling to find them
    thumbnails = "return [...document.querySelectorAll('#examples-shapes video')].map(v => v.readyState >= 2 && v.videoWidth)"
    assert _wait_for(lambda: (sizes := driver.execute_script(thumbnails)) and all(sizes) and sizes, "the example thumbnails") == [
        64,
        64,
    ]
    note = _text(driver, "model-note")
    assert "random weights" in note and "cannot make a photo edit" in note  # tiny is the app's model here
    assert not _edit_enabled(driver)  # nothing to edit yet
    screens(driver, "tab-edit")
    for tab, marker in (("Style sessions", "Create session"), ("One-shot tuning", "1. Tune on the clip")):
        _open_tab(driver, tab)
        _wait_for(
            lambda: [e for e in driver.find_elements("xpath", f"//button[normalize-space()='{marker}']") if e.is_displayed()],
            f"the {tab} tab",
        )
        assert not _edit_enabled(driver, TABS[tab][1]) and "Pick a clip" in _text(driver, f"{TABS[tab][0]}frame-plan")
        if tab == "One-shot tuning":
            first = driver.find_element("xpath", "//button[normalize-space()='1. Tune on the clip']").location["y"]
            second = driver.find_element("xpath", "//button[normalize-space()='2. Edit with the tuned model']").location["y"]
            assert first < second
        if tab == "Style sessions":
            ticked = driver.find_elements("css selector", "input[type=checkbox]:checked")
            assert not [box for box in ticked if box.is_displayed()]  # no photo style preselected for tiny
            presets = driver.find_element("xpath", "//*[normalize-space(text())='Style presets']")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", presets)
        screens(driver, "tab-" + tab.split()[0].lower().replace("-", ""))


def test_a_browser_uploads_edits_and_plays_the_output(browser, app_url, car, screens):
    driver = browser
    driver.get(app_url)
    _upload(driver, car)
    _wait_for(lambda: driver.find_elements("css selector", "#source-video video"), "the uploaded clip to show")
    plan = _wait_for(lambda: "frames," in _text(driver, "frame-plan") and _text(driver, "frame-plan"), "the frame plan")
    assert plan_frames(probe(car), FrameSelection(max_frames=8, size=256)).summary() in plan  # the default trim
    _wait_for(lambda: _edit_enabled(driver), "Edit to be enabled")
    # retyping Frames passes through values the slider refuses: a calm hint, no red Error badge, Edit waits
    from selenium.webdriver.common.keys import Keys

    frames = driver.find_element("css selector", ".frames input[type=number]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", frames)
    frames.send_keys(Keys.CONTROL, "a")
    frames.send_keys("1-")
    _wait_for(lambda: "Frames: type a number from 2 to 64" in _text(driver, "frame-plan"), "the hint for an unfinished number")
    time.sleep(1)  # a failed event would have badged its outputs by now
    assert not _error_badges(driver) and not _toasts(driver) and not _edit_enabled(driver)
    driver.execute_script(
        "document.querySelector('#frame-plan').scrollIntoView({block: 'start'}); window.scrollBy(0, -30)"
    )  # the hint, and the Frames accordion below it
    screens(driver, "frames-retyped")
    frames.send_keys(Keys.CONTROL, "a")
    frames.send_keys("12")
    _wait_for(lambda: "12 frames" in _text(driver, "frame-plan") and _edit_enabled(driver), "the plan and Edit back")
    assert not _error_badges(driver) and not _toasts(driver)
    end = driver.find_element("css selector", ".end")
    assert end.find_element("css selector", "input[type=number]").get_attribute("value") == "0" and "0 = clip end" in end.text
    _small_edit_settings(driver, frames=4, size=128, steps=2)
    small = plan_frames(probe(car), FrameSelection(max_frames=4, size=128)).summary()
    _wait_for(lambda: small in _text(driver, "frame-plan"), "the plan to follow the sliders")
    driver.find_element("css selector", "#prompt textarea").send_keys("a watercolor painting of a car")
    driver.find_element("id", "run-edit").click()

    src = _wait_for(
        lambda: driver.execute_script("const v = document.querySelector('#edited-video video'); return v && v.currentSrc"),
        "the edited clip",
    )
    assert "-edited.mp4" in src
    assert _wait_for(lambda: _playing(driver, "edited-video"), "the edited clip to play")[:2] == [128, 128]
    driver.execute_script("window.scrollTo(0, 0)")  # source and output side by side in the picture
    screens(driver, "edit-uploaded")


def test_a_browser_runs_the_shapes_example_then_stops_a_second_edit(browser, app_url, screens):
    """The shapes example sets clip, prompt, the shapes model and its 64 px and edits; before/after shows
    its frames. A second, long edit stopped midway says "Stopped at step k/n" and keeps the first result."""
    from editing.models import native_size
    from ui.widgets import SHAPES_EXAMPLES

    driver = browser
    driver.get(app_url)
    prompt = SHAPES_EXAMPLES["shapes-clip3.mp4"]
    cell = _wait_for(
        lambda: [e for e in driver.find_elements("xpath", f"//*[normalize-space(text())='{prompt}']") if e.is_displayed()],
        "the shapes example",
    )[0]
    cell.click()
    _wait_for(
        lambda: driver.find_element("css selector", "#prompt textarea").get_attribute("value") == prompt, "the example's prompt"
    )
    size = driver.find_element("css selector", ".size input[type=number]")
    _wait_for(lambda: size.get_attribute("value") == str(native_size("shapes")), "Long side to follow the shapes model")
    _wait_for(lambda: driver.find_elements("css selector", "#source-video video"), "the example clip to show")
    _wait_for(lambda: _edit_enabled(driver), "Edit to be enabled")
    driver.find_element("id", "run-edit").click()
    assert _wait_for(lambda: _playing(driver, "edited-video"), "the edited shapes clip to play") == [native_size("shapes")] * 2
    details = "".join(
        driver.find_element("id", "details").text.split()
    )  # the JSON view puts keys and values on lines of their own
    assert '"model":"shapes"' in details  # the app's default here is tiny
    _wait_for(lambda: len(driver.find_elements("css selector", "#compare img")) == 2, "the before/after view")
    scrubber = driver.find_element("css selector", "#frame-scrubber input[type=number]")
    assert scrubber.is_enabled()
    before = [img.get_attribute("src") for img in driver.find_elements("css selector", "#compare img")]
    _set_number(driver, "#frame-scrubber input[type=number]", 5)
    _wait_for(
        lambda: [img.get_attribute("src") for img in driver.find_elements("css selector", "#compare img")] != before,
        "the scrubber to show frame 5",
    )
    first_result = driver.execute_script("return document.querySelector('#edited-video video').currentSrc")
    driver.execute_script("document.querySelector('#compare').scrollIntoView({block: 'center'})")
    screens(driver, "shapes-example-edited")
    driver.execute_script("document.querySelector('#warp-plot').scrollIntoView({block: 'center'})")
    _wait_for(lambda: driver.find_elements("css selector", "#warp-plot canvas, #warp-plot svg"), "the warp-error plot")
    time.sleep(1)  # the plot draws after its element appears
    screens(driver, "shapes-example-warp-plot")

    _small_edit_settings(driver, frames=4, size=64, steps=50)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.find_element("id", "run-edit").click()
    # the inversion, then the edit, run the strength's share of the Steps: one progress bar says so
    _wait_for(lambda: "30 of 50 steps (strength 0.6)" in _text(driver, "edited-video"), "the second edit to reach its steps")
    assert (
        len([e for e in driver.find_elements("css selector", ".progress-text, .meta-text") if e.is_displayed()]) <= 2
    )  # one bar: its text and its timer
    screens(driver, "second-edit-running")
    driver.find_element("id", "stop").click()
    message = _wait_for(
        lambda: "Stopped at step" in _text(driver, "run-status") and _text(driver, "run-status"),
        "the stopped message",
        timeout=60,
    )
    assert "/30 of " in message and "30 of the 50 steps at strength 0.6" in message, message
    assert (
        driver.execute_script("return document.querySelector('#edited-video video').currentSrc") == first_result
    )  # the last result is kept
    assert not _toasts(driver)
    screens(driver, "second-edit-stopped")


@pytest.mark.parametrize("tab", TABS)
def test_a_clip_browsers_cannot_play_shows_through_its_preview(browser, app_url, tree, screens, tab):
    """In every tab tree.avi (Cinepak) plays in the page through the H.264 preview made on upload; its plan is the clip's."""
    driver = browser
    driver.get(app_url)
    _open_tab(driver, tab)
    prefix, button = TABS[tab]
    _upload(driver, tree, prefix)
    assert _wait_for(lambda: _playing(driver, f"{prefix}source-video"), "the preview to play") == [
        probe(tree).width,
        probe(tree).height,
    ]
    assert f"from {probe(tree).frame_count} source frames" in _text(driver, f"{prefix}frame-plan")
    _wait_for(lambda: _edit_enabled(driver, button), f"{button} to be enabled")
    assert not _toasts(driver) and not _error_badges(driver)
    driver.execute_script(f"document.querySelector('#{prefix}source-video').scrollIntoView({{block: 'center'}})")
    screens(driver, f"tree-avi-preview-{prefix or 'edit-'}tab")
    if tab == "Style sessions":  # its style buttons wait for a session, which the readable clip makes
        assert not _edit_enabled(driver, "session-run-presets")
        driver.find_element("css selector", "#session-name textarea").send_keys(f"tree-{time.time_ns()}")
        driver.find_element("id", "session-create").click()
        _wait_for(
            lambda: _edit_enabled(driver, "session-run-presets") and _edit_enabled(driver, "session-run-prompt"),
            "the style buttons to be enabled",
        )


@pytest.mark.parametrize("tab", TABS)
def test_a_bad_file_is_said_once_and_edit_stays_disabled(browser, app_url, tmp_path, screens, tab):
    driver = browser
    driver.get(app_url)
    _open_tab(driver, tab)
    prefix, button = TABS[tab]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(
        np.random.default_rng(0).bytes(50_000)
    )  # seeded: some random bytes parse as a container with no video stream, another sentence
    _upload(driver, bad, prefix)
    plan = _wait_for(
        lambda: "bad.mp4" in _text(driver, f"{prefix}frame-plan") and _text(driver, f"{prefix}frame-plan"),
        "the plan line to say what is wrong",
    )
    assert "is not a readable video" in plan and "settings" not in plan
    time.sleep(2)  # any toast (Gradio's "Video not playable", an error) would be up by now
    page = driver.find_element("tag name", "body").text
    assert page.count("not a readable video") == 1 and not _toasts(driver)
    assert not _error_badges(driver)  # no red badges
    assert not _edit_enabled(driver, button) and not driver.find_elements("css selector", f"#{prefix}source-video video")
    screens(driver, f"bad-upload-{prefix or 'edit-'}tab")
