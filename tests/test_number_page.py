"""The page's "A number" mode in Chromium: a wide pad (the screen's width on a phone),
the number read with boxes drawn over the digits it found, each digit's top answers on
tap, uploads too, and the mode remembered."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from digitrec.data import Mnist
from digitrec.numbers.synth import number_set
from tests.conftest import PHONE, Tab
from tests.handwriting import DIGITS, Point, placed

pytestmark = [pytest.mark.browser, pytest.mark.server]

Strokes = list[list[Point]]


def number_strokes(text: str, aspect: float, height: float = 0.6) -> tuple[Strokes, list[float]]:
    """``text`` written across a pad ``aspect`` times wider than tall, each digit
    ``height`` of the pad high, unstretched; with each digit's centre as a share of the
    pad's width."""
    strokes: Strokes = []
    centres = [(i + 1) / (len(text) + 1) for i in range(len(text))]
    for char, centre in zip(text, centres, strict=True):
        for stroke in placed(DIGITS[char], height):
            strokes.append([((x - 0.5) / aspect + centre, y) for x, y in stroke])
    return strokes, centres


def settled(page: Any) -> None:
    """The last stroke's answer is in (a later answer would reset the chosen digit)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(400)  # longer than the page's debounce
    expect(page.locator("#answer")).to_have_attribute("aria-busy", "false")


def aspect_of(tab: Tab) -> float:
    box = tab.box()
    return box["width"] / box["height"]


def boxes(tab: Tab) -> list[dict[str, float]]:
    found = [b.bounding_box() for b in tab.page.locator("#boxes .box").all()]
    assert all(b is not None for b in found)
    return [b for b in found if b is not None]


def test_a_number_is_read_with_boxes_and_top_answers_per_digit(
    open_tab: Callable[..., Tab], artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    page.locator("#mode-number").click()
    expect(page.locator("#mode-number")).to_have_attribute("aria-checked", "true")
    expect(page.locator("#message")).to_contain_text("Write a number")
    aspect = aspect_of(tab)
    assert aspect >= 2.5, f"the number pad is only {aspect:.2f} times wider than tall"
    strokes, centres = number_strokes("27", aspect)
    tab.draw(strokes)
    expect(page.locator("#digit")).to_have_text("27")
    settled(page)
    expect(page.locator("#message")).to_have_text("It reads 27.")
    found = boxes(tab)
    assert len(found) == 2
    pad = tab.box()
    for box, centre in zip(found, centres, strict=True):  # each box over its digit
        middle = (box["x"] + box["width"] / 2 - pad["x"]) / pad["width"]
        assert abs(middle - centre) < 0.08, (middle, centre)
        assert pad["y"] <= box["y"] and box["y"] + box["height"] <= pad["y"] + pad["height"]
    page.locator("#boxes .box").nth(1).click()
    expect(page.locator("#boxes .box").nth(1)).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#top li").first).to_have_attribute("data-digit", "7")
    expect(page.locator("#top-title")).to_have_text("Digit 2 of 2: top answers")
    page.locator("#feedback-keys button[data-label='1']").click()  # this digit is a 1
    expect(page.locator("#feedback-status")).to_contain_text("saved as a 1")
    page.screenshot(path=artifacts / "page-number-1280x800.png")

    page.reload()  # the mode is remembered
    page.locator("#model-accuracy").wait_for()
    expect(page.locator("#mode-number")).to_have_attribute("aria-checked", "true")
    page.locator("#mode-digit").click()
    assert aspect_of(tab) == pytest.approx(1.0, abs=0.02)
    tab.draw(DIGITS["4"])
    tab.expect_digit("4")  # the digit mode is as before


def test_on_a_phone_the_number_pad_is_the_screens_width(
    open_tab: Callable[..., Tab], artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = open_tab(**{**PHONE, "viewport": {"width": 390, "height": 844}})
    page = tab.page
    page.locator("#mode-number").click()
    pad = tab.box()
    assert pad["width"] >= 0.88 * 390, pad  # the screen's width, less the card's margins
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    strokes, _ = number_strokes("305", aspect_of(tab), height=0.7)
    tab.touch(strokes)
    expect(page.locator("#digit")).to_have_text("305")
    settled(page)
    expect(page.locator("#boxes .box")).to_have_count(3)
    page.locator("#boxes .box").nth(2).tap()
    expect(page.locator("#top li").first).to_have_attribute("data-digit", "5")
    page.screenshot(path=artifacts / "page-number-390x844.png")


@pytest.mark.mnist
def test_an_uploaded_number_gets_boxes_over_the_photo(
    open_tab: Callable[..., Tab], mnist: Mnist, tmp_path: Path
) -> None:
    from PIL import Image
    from playwright.sync_api import expect

    (made,) = number_set(mnist, 1, lengths=(4,), variant="photo", seed=2)
    photo = tmp_path / "number.png"
    photo.write_bytes(made.data)
    width, height = Image.open(io.BytesIO(made.data)).size
    tab = open_tab()
    page = tab.page
    page.locator("#mode-number").click()
    page.set_input_files("#file", photo)
    expect(page.locator("#digit")).to_have_text(made.text)
    found = boxes(tab)
    assert len(found) == 4
    shown = page.locator("#upload-preview").bounding_box()
    assert shown is not None
    scale = min(shown["width"] / width, shown["height"] / height)  # contained, centred
    left = shown["x"] + (shown["width"] - width * scale) / 2
    top = shown["y"] + (shown["height"] - height * scale) / 2
    for box, truth in zip(found, made.boxes, strict=True):
        x, y, w, h = truth
        centre_x, centre_y = left + (x + w / 2) * scale, top + (y + h / 2) * scale
        assert abs(box["x"] + box["width"] / 2 - centre_x) < 0.05 * shown["width"]
        assert abs(box["y"] + box["height"] / 2 - centre_y) < 0.05 * shown["height"]
