"""A real browser with Chromium's fake camera (a y4m made from a shapes clip) streams into the Live tab: edited
frames arrive with the frame rate on screen, a prompt typed mid-stream is taken, Stop ends the stream.

The app runs on `shapes` (64 px, its few-step LoRA), the setting of the live speed target; the frame rate and
latency the page shows after 20 edited frames are written to live-browser.json beside the screenshots. Screenshots go
to a tmp dir (set BROWSER_SCREENS=DIR to keep copies). It starts a browser and the app, so it runs only with
LIVE_BROWSER=1."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_browser import _free_port, chromium_driver

pytestmark = pytest.mark.skipif(os.environ.get("LIVE_BROWSER") != "1", reason="minutes long: set LIVE_BROWSER=1 to run it")
WAIT = 240  # seconds for the first edited frame (model loading) on a busy 2-core CPU


def write_y4m(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Frames as a YUV4MPEG2 (4:2:0) file, what --use-file-for-fake-video-capture plays."""
    import cv2

    height, width = frames.shape[1:3]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_browser(tmp_path_factory):
    from shapes_world.benchmark import benchmark_clip

    y4m = write_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m", benchmark_clip(0, frames=16, size=128).frames, fps=30)
    driver = chromium_driver(
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={y4m}"
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live_url():
    from ui import build_demo

    demo = build_demo(default_model="shapes")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _edited(driver) -> int:
    text = driver.find_element("id", "live-stats").text
    words = text.split()
    return int(words[words.index("edited,") - 1]) if "edited," in words else 0


def test_a_fake_camera_streams_into_the_live_tab_and_takes_a_new_prompt(camera_browser, live_url, tmp_path):
    screens = Path(os.environ.get("BROWSER_SCREENS") or tmp_path)
    screens.mkdir(parents=True, exist_ok=True)
    driver = camera_browser
    driver.get(live_url)
    tab = _wait_for(
        lambda: [b for b in driver.find_elements("xpath", "//button[@role='tab']") if b.text.strip() == "Live"],
        "the Live tab",
        60,
    )
    tab[0].click()
    prompt = _wait_for(lambda: driver.find_elements("css selector", "#live-prompt textarea"), "the prompt box", 30)[0]
    prompt.send_keys("a red circle")
    camera = driver.find_element("id", "live-camera")
    _wait_for(lambda: [b for b in camera.find_elements("xpath", ".//button") if "Webcam" in b.text], "the webcam button", 30)[
        0
    ].click()
    _wait_for(lambda: [b for b in camera.find_elements("xpath", ".//button") if b.text.strip() == "Record"], "Record", 30)[
        0
    ].click()
    _wait_for(lambda: _edited(driver) >= 20, "edited frames")
    shown = driver.find_element("id", "live-stats").text.split()
    fps, latency = float(shown[shown.index("FPS") - 1]), float(shown[shown.index("ms") - 1])
    assert fps > 0 and latency > 0, shown
    (screens / "live-browser.json").write_text(json.dumps({"fps": fps, "latency_ms": latency, "stats": " ".join(shown)}))
    assert driver.find_elements("css selector", "#live-output img")
    driver.save_screenshot(str(screens / "live-streaming.png"))

    before = _edited(driver)
    prompt.clear()
    prompt.send_keys("a blue square")  # mid-stream: the engine keeps running with the new prompt
    _wait_for(lambda: _edited(driver) >= before + 2, "frames after the prompt change")
    driver.save_screenshot(str(screens / "live-new-prompt.png"))

    driver.find_element("id", "live-stop").click()
    _wait_for(lambda: "stopped" in driver.find_element("id", "live-stats").text, "the stream to stop", 60)
    driver.save_screenshot(str(screens / "live-stopped.png"))
