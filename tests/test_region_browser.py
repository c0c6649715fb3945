"""The Region tab in a real browser (headless chromium, as tests/test_browser.py): upload a clip, give the
region as a mask image of its first frame, Track shows the mask over the clip, Remove plays the result."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shapes_world.benchmark import benchmark_clip, write_lossless
from tests.test_browser import _playing, _wait_for, app_url, browser, screens  # noqa: F401 (fixtures)


def test_region_tab_tracks_a_mask_and_removes_the_object(browser, app_url, screens, tmp_path):  # noqa: F811
    driver = browser
    clip = benchmark_clip(1)
    video = write_lossless(tmp_path / "two-shapes.mp4", clip.frames[:4])
    mask = tmp_path / "first-frame-mask.png"
    Image.fromarray(clip.masks[0, 0].astype(np.uint8) * 255).save(mask)
    driver.get(app_url)
    tab = _wait_for(
        lambda: [
            b for b in driver.find_elements("xpath", "//button[@role='tab' and normalize-space()='Region']") if b.is_displayed()
        ],
        "the Region tab",
    )
    tab[0].click()
    _wait_for(lambda: driver.find_elements("css selector", "#region-clip input[type=file]"), "the clip upload")
    driver.find_element("css selector", "#region-clip input[type=file]").send_keys(str(video))
    _wait_for(lambda: driver.find_elements("css selector", "#region-editor canvas"), "the first frame in the editor")
    driver.find_element("css selector", "#region-mask input[type=file]").send_keys(str(mask))
    _wait_for(lambda: "first-frame-mask" in driver.find_element("id", "region-mask").text, "the mask upload")
    driver.find_element("id", "region-track").click()
    size = _wait_for(lambda: _playing(driver, "region-overlay"), "the mask overlay to play")  # at the model's own size
    driver.execute_script("document.getElementById('region-overlay').scrollIntoView({block: 'start'})")
    screens(driver, "region-tracked")
    prompt = driver.find_element("css selector", "#region-prompt textarea")
    prompt.send_keys("a blue background")
    driver.find_element("id", "region-remove").click()
    assert _wait_for(lambda: _playing(driver, "region-result"), "the removal to play") == size
    details = driver.find_element("id", "region-details").text
    assert "from_frames" in details  # how much of the hole other frames showed
    screens(driver, "region-removed")
