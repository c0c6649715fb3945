"""Make the README's pictures: a before/after strip and GIF of the shapes example, and a screenshot of the app.

    .venv/bin/python scripts/make_readme_media.py                    # all three, into assets/readme/
    .venv/bin/python scripts/make_readme_media.py --no-screenshot    # without a browser

The edit is the README's first command-line example (`python -m editing edit assets/shapes-clip3.mp4
--model shapes ...`), run through the same CLI, offline, with the `shapes` model. The screenshot drives
the app in Debian's headless chromium (apt-get install chromium chromium-driver; selenium is in the lock):
the shapes example clicked, edited, and the page captured with the result showing. A file
assets/readme/made.json records the command, date and commit the pictures came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "assets" / "readme"
CLIP = "assets/shapes-clip3.mp4"
PROMPT = "a yellow square on a striped orange background"
SOURCE_CAPTION = "a yellow square on an orange background"
EDIT_ARGS = ["edit", CLIP, "--model", "shapes", "--prompt", PROMPT, "--inversion-prompt", SOURCE_CAPTION]
SCALE = 3  # 64 px frames shown at 192 px, nearest neighbour
SHOWN = 8  # frames in the strip


def edited_frames(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(source, edited) frames of the README's CLI example, as (N, H, W, 3) uint8."""
    from editing.cli import main as cli
    from editing.config import FrameSelection
    from editing.video_io import read_clip

    out = work / "edited.zip"
    if cli([*EDIT_ARGS, "--out", str(out), "--cache-dir", str(work / "cache")]) != 0:
        raise SystemExit("the example edit failed")
    with zipfile.ZipFile(out) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        edited = np.stack([np.asarray(Image.open(archive.open(n)).convert("RGB")) for n in names])
    source = read_clip(ROOT / CLIP, FrameSelection(size=edited.shape[2])).frames[: len(edited)]
    return source, edited


def _big(frame: np.ndarray) -> Image.Image:
    image = Image.fromarray(frame)
    return image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)


def strip(source: np.ndarray, edited: np.ndarray) -> Image.Image:
    """Two rows (source over edit) of evenly spaced frames, with a label on each row."""
    picks = np.linspace(0, len(source) - 1, min(SHOWN, len(source))).round().astype(int)
    tile, gap, label = source.shape[1] * SCALE, 4, 22
    sheet = Image.new("RGB", (len(picks) * (tile + gap) - gap, 2 * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (frames, text) in enumerate(((source, f"source: {SOURCE_CAPTION}"), (edited, f"edited: {PROMPT}"))):
        top = row * (tile + label)
        draw.text((2, top + 5), text, fill="black")
        for column, index in enumerate(picks):
            sheet.paste(_big(frames[index]), (column * (tile + gap), top + label))
    return sheet


def gif(source: np.ndarray, edited: np.ndarray, path: Path) -> None:
    """An animated GIF, source and edit side by side."""
    tile = source.shape[1] * SCALE
    frames = []
    for before, after in zip(source, edited):
        frame = Image.new("RGB", (2 * tile + 6, tile), "white")
        frame.paste(_big(before), (0, 0))
        frame.paste(_big(after), (tile + 6, 0))
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def screenshot(path: Path) -> None:
    """The app in headless chromium, after the shapes example has been edited."""
    from selenium import webdriver

    from ui import build_demo

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(default_model="shapes")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1050", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        cell = _wait(
            lambda: [e for e in driver.find_elements("xpath", f"//*[normalize-space(text())='{PROMPT}']") if e.is_displayed()]
        )[0]
        cell.click()
        _wait(lambda: driver.find_element("css selector", "#prompt textarea").get_attribute("value") == PROMPT)
        _wait(
            lambda: (
                driver.find_element("id", "run-edit").is_enabled()
                and "disabled" not in (driver.find_element("id", "run-edit").get_attribute("class") or "")
            )
        )
        time.sleep(1)
        driver.find_element("id", "run-edit").click()
        _wait(
            lambda: driver.execute_script(
                "const v = document.querySelector('#edited-video video'); return v && v.readyState >= 2"
            ),
            600,
        )
        _wait(lambda: len(driver.find_elements("css selector", "#compare img")) == 2)
        time.sleep(2)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
        demo.close()


def _wait(condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # an element not there yet
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit("timed out waiting for the app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-screenshot", action="store_true", help="skip the app screenshot (needs chromium)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        source, edited = edited_frames(Path(work))
    strip(source, edited).save(OUT / "shapes-before-after.png", optimize=True)
    gif(source, edited, OUT / "shapes-before-after.gif")
    made = ["shapes-before-after.png", "shapes-before-after.gif"]
    if not args.no_screenshot:
        screenshot(OUT / "app.png")
        made.append("app.png")
    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    )
    record = {
        "command": "python scripts/make_readme_media.py" + (" --no-screenshot" if args.no_screenshot else ""),
        "edit": "python -m editing " + " ".join(f'"{a}"' if " " in a else a for a in EDIT_ARGS) + " --out OUT",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": commit,
        "files": made,
    }
    (OUT / "made.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print("\n".join(str(OUT / name) for name in made))


if __name__ == "__main__":
    main()
