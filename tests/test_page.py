"""The page from real use (#16): at every screen size the answer is in view after drawing,
nothing scrolls sideways and axe-core finds no serious accessibility problem; contrast of
the pad's edge and the focus ring; a refused file; recovery after a server restart; what
screen readers hear; redo; all ten probabilities; example images; the model facts on a
narrow phone. Screenshots go to test-artifacts/page-<w>x<h>.png.

axe-core is vendored for these tests only (tests/vendor/axe-core, never served by the app).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, Tab
from tests.handwriting import DIGITS, SEVEN_IN_TWO, placed, traced

pytestmark = [pytest.mark.browser, pytest.mark.server]

GOLDEN = Path(__file__).parent / "golden"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
TOUCH = {"device_scale_factor": 2, "has_touch": True, "is_mobile": True}
# (width, height, phone): the sizes the issue was tried at, and a phone held sideways.
SIZES = [
    (1280, 800, False),
    (768, 1024, False),
    (390, 844, True),
    (375, 667, True),
    (360, 640, True),
    (320, 568, True),
    (844, 390, True),
]
SERIOUS = {"serious", "critical"}


def context_for(width: int, height: int, phone: bool) -> dict[str, Any]:
    return {"viewport": {"width": width, "height": height}, **(TOUCH if phone else {})}


def write(tab: Tab, strokes: Any, phone: bool, seed: int = 0) -> None:
    """Draw with a finger on a phone, with the mouse elsewhere."""
    if phone:
        tab.touch(strokes, seed=seed)
    else:
        tab.draw(strokes, seed=seed)


def axe_problems(page: Any) -> list[str]:
    """axe-core's violations of impact serious or critical (WCAG 2.x A and AA rules).

    axe is evaluated through the DevTools protocol, which the page's CSP does not govern
    (``add_script_tag`` adds an inline script, which the strict CSP rightly blocks)."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: "tag",
              values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]}})).violations"""
    )
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in result
        if v["impact"] in SERIOUS
    ]


def inside(box: dict[str, float] | None, width: int, height: int) -> bool:
    assert box is not None
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= width
        and box["y"] + box["height"] <= height
    )


# --- 1, 4: everything in view at every size; no sideways scrolling; axe -------------------


@pytest.mark.parametrize(("width", "height", "phone"), SIZES, ids=lambda v: str(v))
def test_answer_is_in_view_after_drawing(
    open_tab: Callable[..., Tab], artifacts: Path, width: int, height: int, phone: bool
) -> None:
    tab = open_tab(**context_for(width, height, phone))
    page = tab.page
    write(tab, DIGITS["7"], phone)
    tab.expect_digit("7")
    assert page.evaluate("[scrollX, scrollY]") == [0, 0], "the page scrolled"
    for selector in ("#pad", ".toolbar", "#digit", "#message", "#top"):
        box = page.locator(selector).bounding_box()
        assert inside(box, width, height), f"{selector} {box} is not inside {width}x{height}"
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), (
        f"the page scrolls sideways at {width}x{height}"
    )
    page.screenshot(path=artifacts / f"page-{width}x{height}.png")
    assert not axe_problems(page)
    page.emulate_media(color_scheme="dark", reduced_motion="reduce")  # no colour fades
    assert not axe_problems(page), "in dark mode"


# --- 4: contrast of the parts axe does not measure ----------------------------------------

CONTRAST = """([selector, property, against, againstProperty]) => {
    const rgb = (text) => text.match(/[\\d.]+/g).slice(0, 3).map(Number);
    return [rgb(getComputedStyle(document.querySelector(selector))[property]),
            rgb(getComputedStyle(document.querySelector(against))[againstProperty])];
}"""


def ratio(a: list[float], b: list[float]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (0..255 channels)."""

    def luminance(rgb: list[float]) -> float:
        c = [v / 255 for v in rgb]
        lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_contrast_of_pad_edge_focus_ring_and_placeholder(
    open_tab: Callable[..., Tab], scheme: str
) -> None:
    tab = open_tab(color_scheme=scheme)
    page = tab.page
    page.keyboard.press("Tab")  # the skip link, then the first button: a real :focus-visible
    page.locator("#undo").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "undo"
    checks = {
        "pad edge / card": ("#pad", "borderTopColor", ".draw", "backgroundColor", 3),
        "pad edge / pad": ("#pad", "borderTopColor", "#pad", "backgroundColor", 3),
        "focus ring / card": ("#undo", "outlineColor", ".draw", "backgroundColor", 3),
        "focus ring / page": ("#undo", "outlineColor", "body", "backgroundColor", 3),
        "placeholder / pad": ("#pad-empty", "color", "#pad", "backgroundColor", 4.5),
    }
    for name, (selector, prop, against, against_prop, needed) in checks.items():
        colour, ground = page.evaluate(CONTRAST, [selector, prop, against, against_prop])
        assert ratio(colour, ground) >= needed, f"{scheme} {name}: {ratio(colour, ground):.2f}"
    assert page.evaluate("getComputedStyle(document.getElementById('pad-empty')).opacity") == "1"


# --- 2: a refused file takes the previous photo away ------------------------------------------


def test_refused_file_clears_the_previous_photo(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    preview, caption = page.locator("#upload-preview"), page.locator("#pad-caption")
    refused = [
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"seven"},
        {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4\n"},
    ]
    for how, file in [("chosen", refused[0]), ("dropped", refused[1])]:
        page.set_input_files("#file", GOLDEN / "photo_paper_3.jpg")
        tab.expect_digit("3")
        expect(preview).to_be_visible()
        expect(caption).to_be_visible()
        if how == "chosen":
            page.set_input_files("#file", files=[file])
        else:
            transfer = page.evaluate_handle(
                """([text, name, type]) => { const t = new DataTransfer();
                   t.items.add(new File([text], name, { type })); return t; }""",
                [file["buffer"].decode(), file["name"], file["mimeType"]],
            )
            page.dispatch_event("#pad", "drop", {"dataTransfer": transfer})
        expect(page.locator("#message")).to_contain_text("not an image")
        expect(preview).to_be_hidden()
        expect(caption).to_be_hidden()
        expect(page.locator("#digit")).to_have_text("?")
        expect(page.locator("#pad-empty")).to_be_visible()


# --- 5, 6: what screen readers hear ---------------------------------------------------------

LISTEN = """() => { window.heard = [];
    new MutationObserver(() => heard.push(document.getElementById("announce").textContent))
      .observe(document.getElementById("announce"), {childList: true, characterData: true,
                                                     subtree: true}); }"""


def test_screen_readers_hear_the_settled_answer_once(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    page.evaluate(LISTEN)
    tab.draw(SEVEN_IN_TWO[:1])
    tab.expect_digit("1")  # the answer to the first stroke is on screen...
    tab.draw(SEVEN_IN_TWO[1:], seed=1)  # ...and the second stroke follows at once
    tab.expect_digit("7")
    tab.wait_until(lambda: len(page.evaluate("heard")) > 0)
    page.wait_for_timeout(1500)  # anything else would have been said by now
    heard = page.evaluate("heard")
    assert len(heard) == 1 and heard[0].startswith("It looks like a 7."), heard
    assert re.search(r"Confidence .*%\.$", heard[0]), heard

    page.locator("#clear").click()
    expect(page.locator("#announce")).to_have_text("Drawing cleared.")
    page.wait_for_timeout(300)
    assert page.evaluate("heard").count("Drawing cleared.") == 1


def test_an_8(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    tab.draw(DIGITS["8"])
    tab.expect_digit("8")
    expect(tab.page.locator("#message")).to_have_text("It looks like an 8.")
    expect(tab.page.locator("#announce")).to_contain_text("It looks like an 8.")
    assert "a 8" not in tab.page.locator("body").inner_text()


def test_draw_with_a_pen(open_tab: Callable[..., Tab]) -> None:
    """A stylus (pointerType "pen", with pressure) draws like a finger or a mouse."""
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    page.evaluate(
        "window.kinds = []; document.getElementById('canvas').addEventListener("
        "'pointerdown', (e) => window.kinds.push(e.pointerType))"
    )
    cdp = page.context.new_cdp_session(page)
    for stroke in traced(placed(DIGITS["7"], 0.6)):
        points = tab.to_page(stroke)
        events = [("mousePressed", points[0])]
        events += [("mouseMoved", p) for p in points[1:]]
        events += [("mouseReleased", points[-1])]
        for kind, (x, y) in events:
            cdp.send(
                "Input.dispatchMouseEvent",
                {
                    "type": kind,
                    "x": x,
                    "y": y,
                    "button": "left",
                    "buttons": 1,
                    "clickCount": 1,
                    "pointerType": "pen",
                    "force": 0.5,
                },
            )
    cdp.detach()
    tab.expect_digit("7")
    assert set(page.evaluate("window.kinds")) == {"pen"}
    expect(page.locator("#answer")).to_have_attribute("aria-busy", "false")


# --- 7: the model facts on a 320 px phone --------------------------------------------------

BROKEN_WORDS = """() => {
    const broken = [];
    for (const dd of document.querySelectorAll(".facts dd")) {
      const walker = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (const match of node.textContent.matchAll(/\\S+/g)) {
          const range = document.createRange();
          range.setStart(node, match.index);
          range.setEnd(node, match.index + match[0].length);
          const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
          if (lines.size > 1) broken.push(match[0]);
        }
      }
      if (dd.scrollWidth > dd.clientWidth) broken.push(`overflow: ${dd.textContent}`);
    }
    return broken;
}"""


def test_facts_never_break_inside_a_word_on_a_narrow_phone(open_tab: Callable[..., Tab]) -> None:
    tab = open_tab(**context_for(320, 568, True))
    page = tab.page
    lefts = page.evaluate("[...document.querySelectorAll('.facts dd')].map((d) => d.offsetLeft)")
    assert len(set(lefts)) == 1, f"the facts are in more than one column: {lefts}"
    assert page.evaluate(BROKEN_WORDS) == []
    page.locator(".facts").scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


# --- 8: redo, all ten probabilities, examples -------------------------------------------------


def test_redo_with_buttons_and_keys(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    redo = page.locator("#redo")
    expect(redo).to_have_attribute("aria-disabled", "true")
    tab.draw(SEVEN_IN_TWO[:1])
    tab.draw(SEVEN_IN_TWO[1:], seed=1)
    tab.expect_digit("7")
    expect(redo).to_have_attribute("aria-disabled", "true")
    for press_undo, press_redo in [
        (lambda: page.locator("#undo").click(), lambda: redo.click()),
        (lambda: page.keyboard.press("Control+z"), lambda: page.keyboard.press("Control+Shift+z")),
        (lambda: page.keyboard.press("Meta+z"), lambda: page.keyboard.press("Meta+Shift+z")),
        (lambda: page.keyboard.press("Control+z"), lambda: page.keyboard.press("Control+y")),
    ]:
        press_undo()
        tab.expect_digit("1")
        expect(redo).to_have_attribute("aria-disabled", "false")
        press_redo()
        tab.expect_digit("7")
        expect(redo).to_have_attribute("aria-disabled", "true")
    page.locator("#undo").click()
    tab.expect_digit("1")
    tab.draw(DIGITS["1"], seed=3)  # a new stroke: nothing left to redo
    expect(redo).to_have_attribute("aria-disabled", "true")

    page.keyboard.press("Escape")
    page.set_input_files("#file", GOLDEN / "photo_paper_3.jpg")  # an upload comes back too
    tab.expect_digit("3")
    page.locator("#undo").click()
    tab.expect_blank()
    redo.click()
    tab.expect_digit("3")
    expect(page.locator("#upload-preview")).to_be_visible()


def test_all_ten_probabilities(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    tab.draw(DIGITS["4"])
    tab.expect_digit("4")
    items = page.locator("#all .top-item")
    expect(items).to_have_count(10)
    expect(items.first).to_be_hidden()  # closed until asked for
    page.locator("#all-ten summary").click()
    expect(items.first).to_be_visible()
    assert [items.nth(i).get_attribute("data-digit") for i in range(10)] == list("0123456789")
    first = page.locator("#top .top-value").first.inner_text()
    assert page.locator('#all .top-item[data-digit="4"] .top-value').inner_text() == first
    assert page.locator('#all .top-item[data-digit="4"]').get_attribute("class") == (
        "top-item is-first"
    )


def test_example_images(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    expect(page.locator("#pad-hint")).to_contain_text("no pen size to set")
    examples = page.locator(".example")
    expect(examples).to_have_count(3)
    for i, digit in enumerate(["2", "7", "3"]):
        examples.nth(i).click()
        tab.expect_digit(digit)
        expect(page.locator("#upload-preview")).to_be_visible()
        assert page.locator("#upload-preview").evaluate("(img) => img.naturalWidth > 0")


# --- 3: recovery after an outage (last: it restarts the module's server) -------------------


def test_recovers_by_itself_after_a_server_restart(
    open_tab: Callable[..., Tab], live_server: LiveServer
) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    tab.allow(r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET")
    page = tab.page
    message = page.locator("#message")
    for send, digit in [
        (lambda: tab.draw(DIGITS["7"]), "7"),
        (lambda: page.set_input_files("#file", GOLDEN / "photo_paper_3.jpg"), "3"),
    ]:
        page.keyboard.press("Escape")
        live_server.stop()
        send()
        expect(message).to_contain_text("cannot be reached")
        expect(message).to_contain_text("Trying again")
        live_server.start_again()
        live_server.wait_ready()
        expect(page.locator("#digit")).to_have_text(digit, timeout=30_000)  # no user action
        expect(message).not_to_have_attribute("data-kind", "error")
        expect(page.locator("#top .bar")).to_have_count(3)
