"""Draw the app icons of the installable page from the favicon's design (a white 7 on the
accent colour): 192 and 512 px, and a 512 px maskable one whose 7 stays inside the
central safe zone (80 % circle). Run once when the design changes:

    python scripts/make_icons.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ICONS = Path(__file__).resolve().parent.parent / "src" / "digitrec" / "web" / "static" / "icons"
ACCENT = (59, 79, 216)  # --accent of the page (#3b4fd8)
WHITE = (255, 255, 255)
SCALE = 4  # drawn this much larger, then reduced: smooth edges


def icon(side: int, maskable: bool) -> Image.Image:
    big = side * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if maskable:  # full bleed: the platform cuts its own shape
        draw.rectangle((0, 0, big, big), fill=ACCENT)
        unit, offset = big * 0.6 / 32, big * 0.2
    else:  # the favicon's rounded square
        draw.rounded_rectangle((0, 0, big - 1, big - 1), radius=big * 7 / 32, fill=ACCENT)
        unit, offset = big / 32, 0.0
    points = [(9.5, 9.0), (22.5, 9.0), (15.0, 24.0)]  # the favicon's path
    xy = [(offset + x * unit, offset + y * unit) for x, y in points]
    width = round(3.6 * unit)
    draw.line(xy, fill=WHITE, width=width, joint="curve")
    for x, y in (xy[0], xy[-1]):  # round caps
        r = width / 2
        draw.ellipse((x - r, y - r, x + r, y + r), fill=WHITE)
    return image.resize((side, side), Image.Resampling.LANCZOS)


def main() -> None:
    ICONS.mkdir(parents=True, exist_ok=True)
    for name, side, maskable in (
        ("icon-192.png", 192, False),
        ("icon-512.png", 512, False),
        ("maskable-512.png", 512, True),
    ):
        icon(side, maskable).save(ICONS / name, optimize=True)
        print(f"{ICONS / name}: {(ICONS / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
