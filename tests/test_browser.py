"""A real browser (Debian's headless chromium via Selenium) uploads a clip, edits it with `tiny`, plays the output;
and runs the shapes example with the shapes model."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from editing.config import FrameSelection
from editing.video_io import plan_frames, probe

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 180  # seconds for the upload, the edit (tiny, 4 frames, 2 steps) and playback on a busy 2-core CPU


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (in requirements.lock)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
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
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_browser_uploads_edits_and_plays_the_output(browser, app_url, car, tmp_path):
    driver = browser
    driver.get(app_url)
    _wait_for(lambda: driver.find_elements("css selector", "#source-video input[type=file]"), "the upload box")
    driver.find_element("css selector", "#source-video input[type=file]").send_keys(str(car))
    _wait_for(lambda: driver.find_elements("css selector", "#source-video video"), "the uploaded clip to show")
    plan = _wait_for(lambda: "frames," in driver.find_element("id", "frame-plan").text and driver.find_element("id", "frame-plan").text, "the frame plan")
    assert plan_frames(probe(car), FrameSelection(max_frames=8, size=256)).summary() in plan  # the default trim
    end = driver.find_element("css selector", ".end")
    assert end.find_element("css selector", "input[type=number]").get_attribute("value") == "0" and "0 = clip end" in end.text
    _set_number(driver, ".frames input[type=number]", 4)
    _set_number(driver, ".size input[type=number]", 128)
    driver.find_element("css selector", "#sampler button").click()  # open the Sampler accordion
    _wait_for(lambda: driver.find_elements("css selector", ".steps input[type=number]"), "the Steps slider")
    _set_number(driver, ".steps input[type=number]", 2)
    small = plan_frames(probe(car), FrameSelection(max_frames=4, size=128)).summary()
    _wait_for(lambda: small in driver.find_element("id", "frame-plan").text, "the plan to follow the sliders")
    driver.find_element("css selector", "#prompt textarea").send_keys("a watercolor painting of a car")
    driver.find_element("id", "run-edit").click()

    src = _wait_for(lambda: driver.execute_script("const v = document.querySelector('#edited-video video'); return v && v.currentSrc"), "the edited clip")
    assert "-edited.mp4" in src
    played = _wait_for(
        lambda: driver.execute_script(
            "const v = document.querySelector('#edited-video video'); v.muted = true; if (v.paused) v.play();"
            "return v.readyState >= 2 && v.currentTime > 0 && [v.videoWidth, v.videoHeight, v.currentTime];"
        ),
        "the edited clip to play",
    )
    assert played[:2] == [128, 128]
    driver.execute_script("window.scrollTo(0, 0)")  # source and output side by side in the picture
    shot = tmp_path / "browser-edit.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_a_browser_runs_the_shapes_example_with_the_shapes_model(browser, app_url, tmp_path):
    """Clicking the shapes example sets clip, prompt, the shapes model and its 64 px; the edit plays."""
    from editing.models import native_size
    from ui.widgets import SHAPES_EXAMPLES

    driver = browser
    driver.get(app_url)
    prompt = SHAPES_EXAMPLES["shapes-clip3.mp4"]
    cell = _wait_for(lambda: [e for e in driver.find_elements("xpath", f"//*[normalize-space(text())='{prompt}']") if e.is_displayed()], "the shapes example")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.click()
    _wait_for(lambda: driver.find_element("css selector", "#prompt textarea").get_attribute("value") == prompt, "the example's prompt")
    size = driver.find_element("css selector", ".size input[type=number]")
    _wait_for(lambda: size.get_attribute("value") == str(native_size("shapes")), "Long side to follow the shapes model")
    _wait_for(lambda: driver.find_elements("css selector", "#source-video video"), "the example clip to show")
    driver.find_element("id", "run-edit").click()
    played = _wait_for(
        lambda: driver.execute_script(
            "const v = document.querySelector('#edited-video video'); if (!v || !v.currentSrc) return false; v.muted = true; if (v.paused) v.play();"
            "return v.readyState >= 2 && v.currentTime > 0 && [v.videoWidth, v.videoHeight];"
        ),
        "the edited shapes clip to play",
    )
    assert played == [native_size("shapes")] * 2
    details = "".join(driver.find_element("id", "details").text.split())  # the JSON view puts keys and values on lines of their own
    assert '"model":"shapes"' in details  # the app's default here is tiny
    shot = tmp_path / "browser-shapes.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
