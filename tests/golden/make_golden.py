"""Make the golden images of tests/test_api.py from real drawings in Chromium.

Run once from the repository root, check, and commit the outputs (the tests only read them):

    .venv/bin/python -m tests.golden.make_golden
    .venv/bin/digitrec predict tests/golden/*

- canvas_transparent_7.png: a "7", dark stroke on a transparent canvas, exported with
  canvas.toDataURL("image/png"), exactly what a browser sends;
- canvas_dark_2.png: a "2", white stroke on a black-filled canvas;
- photo_paper_3.jpg: a "3", dark on white, made to look like a phone photo of paper:
  off-white paper, a lighting gradient, a slight tilt, noise, blur, JPEG quality 85.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from playwright.sync_api import Browser, sync_playwright
from tests.handwriting import DIGITS, traced

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SIDE = 280  # canvas side in CSS pixels (device pixel ratio 1)
PEN = SIDE / 11  # stroke width, as the web page draws it
PHOTO_SIZE = (640, 480)  # the "photo", pixels
DIGIT_SIDE = 330  # the written digit's square on the photo, pixels
SEED = 3

# A bare drawing surface: pointer events draw round strokes of the given colour.
DRAWING_PAGE = """<!doctype html><body style="margin:0">
<canvas id="c" width="{side}" height="{side}" style="touch-action:none"></canvas>
<script>
const canvas = document.getElementById("c"), ctx = canvas.getContext("2d");
if ("{fill}") {{ ctx.fillStyle = "{fill}"; ctx.fillRect(0, 0, {side}, {side}); }}
Object.assign(ctx, {{lineWidth: {pen}, lineCap: "round", lineJoin: "round",
                     strokeStyle: "{ink}"}});
let last = null;
canvas.addEventListener("pointerdown", (e) => {{ last = [e.offsetX, e.offsetY]; }});
canvas.addEventListener("pointermove", (e) => {{
  if (!last) return;
  ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(e.offsetX, e.offsetY); ctx.stroke();
  last = [e.offsetX, e.offsetY];
}});
canvas.addEventListener("pointerup", () => {{ last = null; }});
</script>"""


def draw(browser: Browser, digit: str, ink: str, fill: str = "") -> bytes:
    """Draw ``digit`` with the mouse on a fresh canvas; return its PNG export."""
    page = browser.new_page(viewport={"width": SIDE, "height": SIDE}, device_scale_factor=1)
    page.set_content(DRAWING_PAGE.format(side=SIDE, pen=PEN, ink=ink, fill=fill))
    for stroke in traced(DIGITS[digit], seed=SEED):
        xs, ys = zip(*((x * SIDE, y * SIDE) for x, y in stroke), strict=True)
        page.mouse.move(xs[0], ys[0])
        page.mouse.down()
        for x, y in zip(xs[1:], ys[1:], strict=True):
            page.mouse.move(x, y)
        page.mouse.up()
    data_url = page.evaluate("document.getElementById('c').toDataURL('image/png')")
    page.close()
    return base64.b64decode(data_url.split(",", 1)[1])


def paper_photo(png: bytes, seed: int = SEED) -> bytes:
    """A dark-on-white drawing as a phone photo of a sheet of paper would show it."""
    rng = np.random.default_rng(seed)
    ink = (
        Image.open(io.BytesIO(png))
        .convert("L")
        .rotate(-4, fillcolor=255, resample=Image.Resampling.BICUBIC)
    )
    width, height = PHOTO_SIZE
    ink = ink.resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.LANCZOS)
    darkness = np.ones((height, width), np.float32)
    left, top = (width - DIGIT_SIDE) // 2 + 25, (height - DIGIT_SIDE) // 2 - 10  # off centre
    darkness[top : top + DIGIT_SIDE, left : left + DIGIT_SIDE] = np.asarray(ink, np.float32) / 255
    paper = np.array([238, 232, 220], np.float32)  # warm off-white
    pen = np.array([38, 40, 70], np.float32)  # blue-black ballpoint
    rgb = paper * darkness[..., None] + pen * (1 - darkness[..., None])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.05 - 0.30 * (0.6 * xx / width + 0.4 * yy / height)  # lamp at the top left
    rgb = rgb * light[..., None] + rng.normal(0, 5, rgb.shape)
    photo = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(1.1))
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=85)
    return out.getvalue()


def main() -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        seven = draw(browser, "7", ink="#1d1f2b")
        two = draw(browser, "2", ink="#ffffff", fill="#000000")
        three = draw(browser, "3", ink="#1d1f2b", fill="#ffffff")
        browser.close()
    (HERE / "canvas_transparent_7.png").write_bytes(seven)
    (HERE / "canvas_dark_2.png").write_bytes(two)
    (HERE / "photo_paper_3.jpg").write_bytes(paper_photo(three))
    for name in ("canvas_transparent_7.png", "canvas_dark_2.png", "photo_paper_3.jpg"):
        print(HERE / name)


if __name__ == "__main__":
    main()
