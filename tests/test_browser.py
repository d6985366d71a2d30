"""The web page in a real browser: Debian's Chromium, driven by Playwright, against a real
server on loopback. Draws with mouse and touch, uploads, drops and pastes images, and
checks the answer, the model card, stale answers, errors, layout and console.

Skipped when /usr/bin/chromium is missing, unless DIGITREC_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from digitrec.registry import BUNDLED_ROOT, MANIFEST, Registry
from tests.conftest import (
    DESKTOP,
    PHONE,
    REPORT_CSP,
    TIMEOUT_MS,
    LiveServer,
    Tab,
    parse_metrics,
    require_chromium,
    total,
)
from tests.handwriting import DIGITS, SEVEN_IN_TWO, placed

pytestmark = [pytest.mark.browser, pytest.mark.server]

GOLDEN = Path(__file__).parent / "golden"
WEB = Path(__file__).resolve().parent.parent / "src" / "digitrec" / "web"
PREDICT = "**/api/v1/predict*"


def expected_accuracy() -> str:
    accuracy = Registry(BUNDLED_ROOT, extra_roots=()).resolve().metrics["test_accuracy"]
    return f"{accuracy * 100:.2f}\u00a0%"


# --- a. draw with the mouse on a desktop ------------------------------------------------


def test_draw_digits_with_the_mouse(open_tab: Callable[..., Tab], artifacts: Path) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    expect(tab.page.locator("#model-accuracy")).to_contain_text(expected_accuracy())
    tab.draw(DIGITS["7"])
    tab.expect_digit("7")
    expect(tab.page.locator("#top .top-value").first).to_have_text(
        re.compile(r"^(>\s)?\d+\.\d\s%$")
    )
    expect(tab.page.locator("#seen-img")).to_be_visible()
    expect(tab.page.locator("#processing")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    expect(tab.page.locator("#announce")).to_contain_text("It looks like a 7.")
    tab.page.screenshot(path=artifacts / "desktop.png")

    tab.page.locator("#clear").click()
    tab.draw(DIGITS["3"], seed=1)
    tab.expect_digit("3")


def test_dark_mode(open_tab: Callable[..., Tab], artifacts: Path) -> None:
    tab = open_tab(color_scheme="dark")
    tab.draw(DIGITS["2"], seed=2)
    tab.expect_digit("2")
    background = tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = map(int, re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 64, f"dark mode background is {background}"
    tab.page.screenshot(path=artifacts / "desktop-dark.png")


# --- b. draw with a finger on a phone ---------------------------------------------------


def test_draw_with_touch_on_a_phone(open_tab: Callable[..., Tab], artifacts: Path) -> None:
    tab = open_tab(**PHONE)
    page = tab.page
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    assert page.evaluate("document.documentElement.scrollHeight > innerHeight"), (
        "the page should be taller than a phone screen, or the scroll check means nothing"
    )
    page.evaluate("""() => {
        window.scrollTo(0, 40);
        window.pointerTypes = new Set();
        document.getElementById("canvas").addEventListener(
            "pointerdown", (e) => window.pointerTypes.add(e.pointerType));
    }""")
    page.wait_for_function("scrollY === 40")
    tab.touch(DIGITS["7"])
    tab.expect_digit("7")
    assert page.evaluate("[...pointerTypes]") == ["touch"]
    assert page.evaluate("scrollY") == 40, "the page scrolled while drawing"
    assert page.evaluate("scrollX") == 0
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=artifacts / "phone.png", full_page=True)

    page.emulate_media(color_scheme="dark", reduced_motion="reduce")  # no colour fades
    page.screenshot(path=artifacts / "phone-dark.png", full_page=True)
    page.set_viewport_size({"width": 320, "height": 568})
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), (
        "the page scrolls sideways on a 320 px phone"
    )


# --- c. uploads: file picker, drag and drop, paste ----------------------------------------

DATA_TRANSFER = """([b64, name, type]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    return transfer;
}"""


def test_upload_drop_and_paste(open_tab: Callable[..., Tab], artifacts: Path) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    page.set_input_files("#file", GOLDEN / "photo_paper_3.jpg")
    tab.expect_digit("3")
    expect(page.locator("#upload-preview")).to_be_visible()
    page.screenshot(path=artifacts / "desktop-upload.png")

    def transfer(name: str) -> Any:
        b64 = base64.b64encode((GOLDEN / name).read_bytes()).decode()
        return page.evaluate_handle(DATA_TRANSFER, [b64, name, "image/png"])

    page.dispatch_event("#pad", "drop", {"dataTransfer": transfer("canvas_dark_2.png")})
    tab.expect_digit("2")
    page.evaluate(
        "(t) => document.dispatchEvent(new ClipboardEvent('paste', "
        "{clipboardData: t, bubbles: true}))",
        transfer("canvas_transparent_7.png"),
    )
    tab.expect_digit("7")

    page.locator("#undo").click()  # undo of an upload takes the image away
    tab.expect_blank()
    expect(page.locator("#upload-preview")).to_be_hidden()


# --- d. clear and undo; a blank pad sends nothing ------------------------------------------


def test_undo_and_clear(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    tab.expect_blank()
    expect(page.locator("#undo")).to_have_attribute("aria-disabled", "true")
    page.locator("#clear").dispatch_event("click")  # disabled, nothing to clear: no request
    tab.draw(SEVEN_IN_TWO[:1])
    tab.expect_digit("1")
    tab.draw(SEVEN_IN_TWO[1:], seed=1)
    tab.expect_digit("7")
    sent = len(tab.predictions)

    page.locator("#undo").click()  # back to the "1": asks again
    tab.expect_digit("1")
    assert len(tab.predictions) == sent + 1
    page.keyboard.press("Control+z")  # back to nothing: asks nothing
    tab.expect_blank()
    expect(page.locator("#undo")).to_have_attribute("aria-disabled", "true")

    tab.draw(DIGITS["3"])
    tab.expect_digit("3")
    sent = len(tab.predictions)
    page.locator("#clear").click()
    tab.expect_blank()
    page.wait_for_timeout(400)  # longer than the debounce: a late request would show here
    assert len(tab.predictions) == sent

    tab.draw([[(0.5, 0.5)]])  # a tap leaves a dot, and the dot is read: as no digit
    expect(page.locator("#answer")).to_have_attribute("data-verdict", "not_a_digit")
    expect(page.locator("#top .bar")).to_have_count(3)
    sent = len(tab.predictions)
    page.keyboard.press("Escape")
    tab.expect_blank()
    page.wait_for_timeout(400)
    assert len(tab.predictions) == sent
    blank = page.evaluate("document.getElementById('canvas').toDataURL()")
    empty = page.evaluate("""() => { const c = document.createElement('canvas');
        const d = document.getElementById('canvas'); c.width = d.width; c.height = d.height;
        return c.toDataURL(); }""")
    assert blank == empty, "Clear left marks on the canvas"


# --- e. no figure on the page is typed in ------------------------------------------------


def test_accuracy_comes_from_the_manifest(
    browser: Any, tmp_path: Path, open_tab: Callable[..., Tab]
) -> None:
    from playwright.sync_api import expect

    for name in ("index.html", "static/app.js", "static/style.css"):
        text = (WEB / name).read_text()
        assert not re.search(r"\d\s*%", text), f"{name} holds a percentage figure"

    entry = Registry(BUNDLED_ROOT, extra_roots=()).resolve()
    copy = tmp_path / "models" / entry.name / entry.version
    shutil.copytree(entry.path, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["metrics"]["test_accuracy"] = 0.1234
    (copy / MANIFEST).write_text(json.dumps(manifest))
    # Keys required, too: the page must work with its own token alone.
    server = LiveServer(
        tmp_path / "home",
        env={
            "DIGITREC_MODELS_DIR": str(tmp_path / "models"),
            "DIGITREC_REQUIRE_API_KEY": "true",
            "DIGITREC_RATE_LIMIT_PER_MINUTE": "0",
            "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0",
        },
    )
    try:
        server.wait_ready()
        tab = open_tab(server.url)
        expect(tab.page.locator("#model-accuracy")).to_contain_text("12.34\u00a0%")
        expect(tab.page.locator("#model-name")).to_have_text(f"{entry.name} {entry.version}")
        tab.draw(DIGITS["1"])
        tab.expect_digit("1")
    finally:
        server.stop()


# --- f. a stale answer never replaces a newer one ----------------------------------------


def test_stale_answer_is_dropped(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))
    tab.draw(SEVEN_IN_TWO[:1])  # "1": its answer is held back
    tab.wait_until(lambda: len(held) == 1)
    tab.draw(SEVEN_IN_TWO[1:], seed=1)  # "7": answered first
    tab.wait_until(lambda: len(held) == 2)
    finished: list[Any] = []
    page.on("requestfinished", lambda request: finished.append(request))
    held[1].continue_()
    tab.expect_digit("7")
    stale = {
        "digit": 4,
        "confidence": 0.99,
        "processing_ms": 1.0,
        "top": [
            {"digit": 4, "probability": 0.99},
            {"digit": 9, "probability": 0.006},
            {"digit": 1, "probability": 0.004},
        ],
        "model": {"name": "stale", "version": "0"},
    }
    held[0].fulfill(json=stale)
    tab.wait_until(lambda: len(finished) == 2)
    page.wait_for_timeout(100)  # let the page handle the late answer
    tab.expect_digit("7")
    expect(page.locator("#message")).to_have_text("It looks like a 7.")


# --- g. errors, token renewal, console and CSP ------------------------------------------


def test_errors_are_explained(open_tab: Callable[..., Tab]) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    tab.allow(r"status of (401|413|415|429)")
    message = page.locator("#message")

    def answer_with(status: int, code: str, headers: dict[str, str] | None = None) -> None:
        page.unroute(PREDICT)
        page.route(
            PREDICT,
            lambda route: route.fulfill(
                status=status,
                headers=headers or {},
                content_type="application/json",
                body=json.dumps({"error": {"code": code, "message": "refused"}}),
            ),
        )

    answer_with(429, "rate_limited", {"Retry-After": "7"})
    tab.draw(DIGITS["1"])
    expect(message).to_have_text("Too many requests. Try again in 7 s.")
    expect(page.locator("#digit")).to_have_text("?")
    answer_with(415, "unsupported_media_type")
    page.locator("#undo").click()
    tab.draw(DIGITS["1"])
    expect(message).to_contain_text("not an image the server reads")
    page.unroute(PREDICT)
    page.route(PREDICT, lambda route: route.abort("connectionrefused"))
    tab.allow(r"ERR_CONNECTION_REFUSED")
    page.locator("#undo").click()
    tab.draw(DIGITS["1"])
    expect(message).to_contain_text("cannot be reached")

    # A refused token (expired, or the server restarted) is renewed once, then retried.
    page.unroute(PREDICT)
    tokens: list[str] = []
    page.on("request", lambda r: "/web/token" in r.url and tokens.append(r.url))
    calls: list[str] = []

    def refuse_first(route: Any) -> None:
        calls.append(route.request.headers.get("x-web-token", ""))
        if len(calls) == 1:
            route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps({"error": {"code": "unauthorized", "message": "no"}}),
            )
        else:
            route.continue_()

    page.route(PREDICT, refuse_first)
    page.locator("#undo").click()
    tab.draw(DIGITS["1"])
    tab.expect_digit("1")
    assert len(calls) == 2 and len(tokens) == 1 and calls[0] != calls[1]


def test_session_has_no_console_errors_or_csp_violations(open_tab: Callable[..., Tab]) -> None:
    tab = open_tab()
    page = tab.page
    tab.draw(DIGITS["2"])
    tab.expect_digit("2")
    page.keyboard.press("Control+z")
    page.set_input_files("#file", GOLDEN / "canvas_transparent_7.png")
    tab.expect_digit("7")
    page.keyboard.press("Escape")
    tab.expect_blank()
    page.reload()
    page.locator("#model-accuracy").filter(has_text=re.compile(r"\d")).wait_for()
    focused = []
    for _ in range(7):  # the skip link, what to read, its script, the buttons: by keyboard
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    assert focused == ["skip", "mode-digit", "script", "undo", "redo", "clear", "upload"], focused
    # Enter on Upload opens the file picker. (Recorded as a click on the file input:
    # waiting for Playwright's file-chooser event races with the key press under load.)
    page.evaluate(
        "document.getElementById('file').addEventListener("
        "'click', (e) => { window.__pickerOpened = true; e.preventDefault(); })"
    )
    page.keyboard.press("Enter")
    page.wait_for_function("window.__pickerOpened === true")
    page.set_input_files("#file", GOLDEN / "canvas_dark_2.png")
    tab.expect_digit("2")
    assert tab.problems == []


# --- h. a digit written small is read as well as one written large ----------------------


def contact_sheet(shots: list[bytes], path: Path, columns: int = 5) -> None:
    """Screenshots side by side, at half size, in rows of ``columns``."""
    from PIL import Image

    images = [Image.open(io.BytesIO(shot)) for shot in shots]
    width = max(image.width for image in images) // 2
    height = max(image.height for image in images) // 2
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        image.thumbnail((width, height))
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    sheet.save(path)


def test_small_digits_are_read_as_well_as_large_ones(
    open_tab: Callable[..., Tab], artifacts: Path
) -> None:
    """The ten digits with the default pen, 60 % of the pad tall and centred, then 15 %
    tall in the top-left corner: the small ones must not turn into blobs."""
    tab = open_tab()
    sizes = {"60": (0.60, None), "15": (0.15, (0.08, 0.08))}
    read: dict[str, dict[str, str]] = {}
    for name, (height, corner) in sizes.items():
        read[name], shots = {}, []
        for digit, strokes in DIGITS.items():
            read[name][digit] = tab.read(placed(strokes, height, corner), seed=int(digit))
            shots.append(tab.page.locator(".layout").screenshot())
        contact_sheet(shots, artifacts / f"digits-{name}.png")
    (artifacts / "digits.json").write_text(json.dumps(read, indent=2))
    right = {size: sum(got == digit for digit, got in read[size].items()) for size in read}
    assert right["60"] >= 9, f"{right['60']}/10 right at 60 %: {read['60']}"
    assert right["15"] >= right["60"], f"at 15 % {read['15']}, at 60 % {read['60']}"


# --- i. the verdict: a drawing that is not one digit is not answered with a digit ---------


def test_verdicts_are_shown(open_tab: Callable[..., Tab], artifacts: Path) -> None:
    """Drawings the real model refuses: a star is not a digit, a 1 beside a 2 is several
    digits; the page says so plainly and mutes the guesses. "unsure" (no drawing gives it
    on purpose) is the server's real answer with only its verdict changed."""
    from playwright.sync_api import expect

    tab = open_tab(color_scheme="dark")
    page = tab.page
    message, digit, top = page.locator("#message"), page.locator("#digit"), page.locator("#top")
    star = [[(0.5, 0.15), (0.62, 0.8), (0.2, 0.4), (0.8, 0.4), (0.38, 0.8), (0.5, 0.15)]]
    assert tab.read(star) == "not_a_digit"
    expect(message).to_have_text("That does not look like a digit.")
    expect(digit).to_have_text("?")
    expect(top).to_have_class(re.compile(r"\bis-muted\b"))
    expect(top.locator(".bar")).to_have_count(3)
    expect(page.locator("#top-title")).to_have_text("Best guesses")
    expect(page.locator("#confidence")).to_be_hidden()
    expect(page.locator("#announce")).to_contain_text("does not look like a digit")
    page.screenshot(path=artifacts / "desktop-dark-not-a-digit.png")

    one_two = placed(DIGITS["1"], 0.4, (0.1, 0.3)) + placed(DIGITS["2"], 0.4, (0.5, 0.3))
    assert tab.read(one_two) == "several_digits"
    expect(message).to_have_text("That looks like more than one digit: draw one at a time.")
    expect(digit).to_have_text("?")

    def unsure(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "verdict": "unsure"})

    page.route(PREDICT, unsure)
    page.keyboard.press("Escape")
    tab.draw(DIGITS["7"])
    expect(message).to_have_text("Not sure that is a digit.")
    expect(digit).to_have_text("7")  # the best guess, outlined rather than filled
    expect(digit).to_have_class(re.compile(r"\bis-guess\b"))
    expect(digit).not_to_have_class(re.compile(r"\bis-known\b"))
    expect(page.locator("#announce")).to_contain_text("Best guess: 7.")
    page.screenshot(path=artifacts / "desktop-dark-unsure.png")
    page.unroute(PREDICT)

    assert tab.read(DIGITS["7"]) == "7"
    expect(message).to_have_text("It looks like a 7.")
    expect(top).not_to_have_class(re.compile(r"\bis-muted\b"))
    expect(page.locator("#top-title")).to_have_text("Top answers")


# --- j. corrections: "Right? Yes" or "Wrong: tap the right digit" ---------------------------

FEEDBACK = "**/api/v1/feedback"


def predict_requests(page: Any) -> list[Any]:
    """Every POST /api/v1/predict the page makes from now on, in order."""
    requests: list[Any] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and "/api/v1/predict" in r.url and requests.append(r),
    )
    return requests


def answer_shown(requests: list[Any]) -> str:
    """The prediction_id of the newest answer: the one on screen once the page is idle."""
    response = requests[-1].response()
    assert response is not None and response.ok, response
    prediction_id = response.json()["prediction_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", prediction_id), prediction_id
    return str(prediction_id)


def stored(server: LiveServer, prediction_id: str) -> list[Any]:
    """The corrections the server stored for one answer, read back through its own store."""
    from digitrec.config import Settings
    from digitrec.db import Database
    from digitrec.feedback import list_feedback

    db = Database.from_settings(Settings(home=server.log.parent))
    try:
        return [c for c in list_feedback(db, limit=None) if c.prediction_id == prediction_id]
    finally:
        db.dispose()


def test_feedback_sends_a_correction_from_the_page(
    open_tab: Callable[..., Tab], live_server: LiveServer, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    requests = predict_requests(page)
    control, status = page.locator("#feedback"), page.locator("#feedback-status")
    wrong = page.get_by_role("group", name="Wrong: tap the right digit")
    yes = page.get_by_role("button", name="Yes", exact=True)
    expect(control).to_be_hidden()
    assert tab.read(DIGITS["7"]) == "7"
    expect(control).to_be_visible()
    expect(page.locator("#feedback-note")).to_contain_text("28\u00d728 image the model saw")
    expect(page.locator(".footer")).to_contain_text("unless you send it as a correction")
    shown = answer_shown(requests)

    wrong.get_by_role("button", name="2", exact=True).click()
    expect(status).to_have_text("Thanks \u2014 saved as a 2.")
    expect(wrong.get_by_role("button", name="2", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    [correction] = stored(live_server, shown)
    assert (correction.label, correction.right) == (2, False)
    page.screenshot(path=artifacts / "desktop-feedback.png")

    yes.click()  # a second tap replaces the correction
    expect(status).to_have_text("Thanks \u2014 saved as a 7.")
    expect(yes).to_have_attribute("aria-pressed", "true")
    expect(wrong.get_by_role("button", name="2", exact=True)).to_have_attribute(
        "aria-pressed", "false"
    )
    [correction] = stored(live_server, shown)
    assert (correction.label, correction.right) == (7, True)

    assert tab.read(DIGITS["3"], seed=1) == "3"  # a new answer: a fresh control
    expect(status).to_have_text("")
    expect(control.locator("[aria-pressed='true']")).to_have_count(0)

    # An answer the server no longer knows (expired): the real server's 404, said plainly.
    tab.allow(r"status of 404")
    unknown = "0" * 32
    page.route(
        FEEDBACK,
        lambda route: route.continue_(
            post_data=json.dumps({**route.request.post_data_json, "prediction_id": unknown})
        ),
    )
    wrong.get_by_role("button", name="Not a digit").click()
    expect(status).to_contain_text("That answer has expired, so the correction was not saved.")
    expect(status).to_have_attribute("data-kind", "error")
    expect(control.locator("[aria-pressed='true']")).to_have_count(0)
    page.unroute(FEEDBACK)
    assert stored(live_server, unknown) == []

    page.keyboard.press("Escape")  # no answer, nothing to correct
    tab.expect_blank()
    expect(control).to_be_hidden()


def test_feedback_by_keyboard_only(open_tab: Callable[..., Tab], live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    requests = predict_requests(page)
    status = page.locator("#feedback-status")
    assert tab.read(DIGITS["7"]) == "7"
    shown = answer_shown(requests)

    def focused() -> str:
        return str(page.evaluate("document.activeElement.id || document.activeElement.textContent"))

    page.locator("#skip").focus()  # the pen needs a pointer; from here on, keys only
    order = []
    # the switch is one tab stop; the script picker another
    tools = ["mode-digit", "script", "undo", "redo", "clear", "upload"]
    more = ["All ten digits", "example-2", "example-7", "example-3"]
    for _ in range(len(tools) + len(more) + 2):  # the tools, all ten, examples, then "Yes"
        page.keyboard.press("Tab")
        order.append(focused())
    assert order == [*tools, *more, "feedback-yes", "0"], order
    for _ in range(3):
        page.keyboard.press("Tab")
    assert focused() == "3"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "the focused key shows no focus ring"
    page.keyboard.press("Enter")
    expect(status).to_have_text("Thanks \u2014 saved as a 3.")
    [correction] = stored(live_server, shown)
    assert (correction.label, correction.right) == (3, False)

    page.keyboard.press("5")  # with the keyboard in the control, typing a digit sends it
    expect(status).to_have_text("Thanks \u2014 saved as a 5.")
    assert focused() == "5"
    [correction] = stored(live_server, shown)
    assert correction.label == 5


def test_feedback_on_a_phone(
    open_tab: Callable[..., Tab], live_server: LiveServer, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = open_tab(**PHONE)
    page = tab.page
    requests = predict_requests(page)
    tab.touch(DIGITS["7"])
    tab.expect_digit("7")
    page.wait_for_timeout(400)  # longer than the debounce: the last answer is on its way
    expect(page.locator("#answer")).to_have_attribute("aria-busy", "false")
    shown = answer_shown(requests)

    keys = page.locator("#feedback button")
    expect(keys).to_have_count(12)
    for i in range(keys.count()):
        box = keys.nth(i).bounding_box()
        assert box is not None and box["width"] >= 44 and box["height"] >= 44, box
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    page.get_by_role("button", name="Not a digit").tap()
    expect(page.locator("#feedback-status")).to_have_text("Thanks \u2014 saved as not a digit.")
    [correction] = stored(live_server, shown)
    assert (correction.label, correction.right) == (None, False)
    page.locator("#feedback").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "phone-feedback.png")
    page.set_viewport_size({"width": 320, "height": 568})
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), (
        "the correction keys make a 320 px phone scroll sideways"
    )


# --- i. the dashboard: the figures /api/v1/stats reports, at desktop and phone sizes ----

STATS_URL = "/api/v1/stats"


def _http(url: str, data: bytes | None = None, content_type: str = "") -> Any:
    import urllib.request

    headers = {"content-type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _send_traffic(server: LiveServer) -> list[dict[str, Any]]:
    """Real answers and corrections through the real server; returns the answers."""
    answers = []
    for name in ("canvas_dark_2.png", "canvas_transparent_7.png", "photo_paper_3.jpg"):
        raw = (GOLDEN / name).read_bytes()
        kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
        answers.append(_http(f"{server.url}/api/v1/predict", raw, kind))
    wrong = {"prediction_id": answers[0]["prediction_id"], "label": 5}
    right = {"prediction_id": answers[1]["prediction_id"], "correct": True}
    for body in (wrong, right):
        _http(f"{server.url}/api/v1/feedback", json.dumps(body).encode(), "application/json")
    return answers


def _open_dashboard(browser: Any, server: LiveServer, **context: Any) -> Tab:
    page = browser.new_context(**{**DESKTOP, **context}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(REPORT_CSP)
    tab = Tab(page)
    page.goto(f"{server.url}/dashboard")
    page.locator("#main[aria-busy=false]").wait_for()
    return tab


def _stats_settled(server: LiveServer, at_least: int) -> dict[str, Any]:
    """The stats once the server's log has written ``at_least`` answers (and the cache
    has caught up with them)."""
    deadline = time.monotonic() + 20
    while True:
        stats = _http(f"{server.url}{STATS_URL}")
        figures = stats["traffic"]
        if figures["predictions"] >= at_least and figures["requests"] and stats["corrections"]:
            return stats
        assert time.monotonic() < deadline, stats["traffic"]
        time.sleep(0.5)


def _reload_with_stats(tab: Tab, server: LiveServer) -> dict[str, Any]:
    """Reload the dashboard and return the stats it shows: fetched right after the page
    showed them, so the server's cache (``stats.CACHE_S``) still holds the same figures;
    again if that cache was renewed in between, which a slow machine can take long enough
    for. Nothing else is sending: the figures themselves do not change."""
    page = tab.page
    for _ in range(5):
        page.reload()
        page.locator("#main[data-generated-at]").wait_for()
        shown = page.locator("#main").get_attribute("data-generated-at")
        stats = _http(f"{server.url}{STATS_URL}")
        if stats["generated_at"] == shown:
            return stats
    raise AssertionError(f"the page never showed the stats the server had ({shown})")


def _expect_figures(tab: Tab, stats: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.locator(f"#main[data-generated-at='{stats['generated_at']}']").wait_for()
    expect(page.locator("#traffic-count")).to_have_text(f"{stats['traffic']['requests']:,}")
    expect(page.locator("#draws-count")).to_have_text(f"{stats['draws']['predictions']:,}")
    shown = page.locator("#digit-counts li .v").all_inner_texts()
    assert shown == [f"{n:,}" for n in stats["draws"]["by_digit"]]
    expect(page.locator("#corrections li")).to_have_count(len(stats["corrections"]))
    first = stats["corrections"][0]
    shot = page.locator(f"#corrections li[data-id='{first['prediction_id']}']")
    expect(shot.locator("img")).to_have_attribute("src", first["image"])
    for row in stats["models"]["online"]:
        item = page.locator(f"#online li[data-model='{row['model']}']")
        expect(item).to_have_attribute("data-corrections", str(row["corrections"]))
    production = stats["models"]["production"]
    expect(page.locator("#arms")).to_contain_text(production)
    versions = page.locator("#training article.version")
    expect(versions).to_have_count(len(stats["training"]))
    newest = stats["training"][-1]
    accuracy = f"{newest['test_accuracy'] * 100:.2f}\u00a0%"
    expect(versions.first.locator(".test-accuracy")).to_have_text(accuracy)
    expect(versions.first.locator(".hm-cell")).to_have_count(100)
    for chart in ("#chart-traffic", "#chart-latency", "#chart-digits", "#chart-confidence"):
        expect(page.locator(f"{chart} canvas")).to_have_count(1)
    for index, version in enumerate(reversed(stats["training"])):  # newest first on the page
        card = versions.nth(index)
        expect(card.locator(".mistakes li")).to_have_count(len(version["mistakes"]))
        expect(card.locator(".curves canvas")).to_have_count(2 if version["curves"] else 0)
    expect(page.locator("#empty")).to_be_hidden()


def test_dashboard_shows_what_the_stats_report(
    browser: Any, live_server: LiveServer, artifacts: Path
) -> None:
    require_chromium()
    _send_traffic(live_server)
    before = _http(f"{live_server.url}{STATS_URL}")  # may be a few seconds old
    stats = _stats_settled(live_server, at_least=3)
    assert stats["traffic"]["predictions"] >= before["traffic"]["predictions"]
    tabs = []
    for name, context in (
        ("dashboard", DESKTOP),
        ("dashboard-phone", PHONE),
        ("dashboard-dark", {**DESKTOP, "color_scheme": "dark"}),
    ):
        tab = _open_dashboard(browser, live_server, **context)
        tabs.append(tab)
        _expect_figures(tab, _reload_with_stats(tab, live_server))
        width = tab.page.evaluate("document.documentElement.scrollWidth")
        assert width <= context["viewport"]["width"], f"{name}: {width} px wide"
        tab.page.screenshot(path=artifacts / f"{name}.png", full_page=True)
    problems = [p for tab in tabs for p in tab.problems]
    for tab in tabs:
        tab.page.context.close()
    assert not problems, problems


def _metrics_figures(server: LiveServer) -> dict[str, Any]:
    """What the Prometheus endpoint reports, read with the client's own parser, reduced to
    the dashboard's figures."""
    import urllib.request

    from digitrec.traffic import counted

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        samples = parse_metrics(response.read().decode())
    api = {
        (dict(labels)["route"], int(dict(labels)["status"])): n
        for (name, labels), n in samples.items()
        if name == "digitrec_requests_total" and counted(dict(labels)["route"])
    }
    refused = sum(
        n
        for (name, labels), n in samples.items()
        if name == "digitrec_refused_total" and dict(labels)["reason"] != "idle_closed_for_room"
    )
    return {
        "requests": int(sum(api.values()) + refused),
        "errors": int(sum(n for (_, status), n in api.items() if status >= 400) + refused),
        "refused": int(refused),
        "by_digit": [
            int(total(samples, "digitrec_predictions_total", digit=str(d))) for d in range(10)
        ],
        "corrections": int(total(samples, "digitrec_corrections_total")),
    }


def test_dashboard_agrees_with_the_metrics_endpoint(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    """Real traffic, good and bad, through a fresh server; the dashboard's traffic, digit
    and correction figures, and what its charts draw, equal the /metrics counters."""
    import urllib.error
    import urllib.request

    from playwright.sync_api import expect

    require_chromium()
    server = LiveServer(tmp_path / "home")
    try:
        server.wait_ready()
        _send_traffic(server)
        bad = [
            (f"{server.url}/api/v1/predict", b"not an image", "image/png"),  # 415
            (f"{server.url}/api/v1/feedback", b'{"label": 1}', "application/json"),  # 422
            (f"{server.url}/api/v1/predict?{'x' * 70_000}", None, ""),  # 414, before the app
        ]
        for url, data, kind in bad:
            with pytest.raises(urllib.error.HTTPError):
                _http(url, data, kind)
        want = _metrics_figures(server)
        assert want["refused"] == 1 and want["errors"] == 3 and want["requests"] == 3 + 2 + 3
        deadline = time.monotonic() + 20  # the workers write their counts every few seconds
        while _http(f"{server.url}{STATS_URL}")["traffic"]["requests"] < want["requests"]:
            assert time.monotonic() < deadline, "the traffic counts never reached the stats"
            time.sleep(0.5)
        assert _metrics_figures(server) == want  # the dashboard's polling is not traffic

        for name, context in (("1280x800", DESKTOP), ("375x667", PHONE)):
            tab = _open_dashboard(browser, server, **context)
            page = tab.page
            expect(page.locator("#traffic-count")).to_have_text(f"{want['requests']:,}")
            expect(page.locator("#traffic-errors")).to_have_text(f"{want['errors']:,}")
            expect(page.locator("#error-rate")).to_have_text(
                f"{want['errors'] / want['requests'] * 100:.1f}\u00a0%"
            )
            shown = page.locator("#digit-counts li .v").all_inner_texts()
            assert shown == [f"{n:,}" for n in want["by_digit"]]
            expect(page.locator("#draws-count")).to_have_text(f"{sum(want['by_digit']):,}")
            online = page.locator("#online li").first
            expect(online).to_have_attribute("data-corrections", str(want["corrections"]))
            drawn = json.loads(page.locator("#chart-traffic").get_attribute("data-totals") or "[]")
            per_minute = 60  # the chart draws requests and errors per second of each minute
            assert [round(x * per_minute) for x in drawn] == [want["requests"], want["errors"]]
            digits = json.loads(page.locator("#chart-digits").get_attribute("data-totals") or "[]")
            assert digits == [sum(want["by_digit"])]
            page.screenshot(path=artifacts / f"dashboard-traffic-{name}.png", full_page=True)
            page.context.close()
            assert not tab.problems, tab.problems
    finally:
        server.stop()


def test_dashboard_pauses_while_hidden(browser: Any, live_server: LiveServer) -> None:
    require_chromium()
    tab = _open_dashboard(browser, live_server)
    page = tab.page
    asked: list[float] = []
    page.on("request", lambda r: asked.append(time.monotonic()) if STATS_URL in r.url else None)
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => "
        "'hidden'}); document.dispatchEvent(new Event('visibilitychange'));"
    )
    page.wait_for_timeout(6500)  # longer than one refresh period
    assert asked == []
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => "
        "'visible'}); document.dispatchEvent(new Event('visibilitychange'));"
    )
    tab.wait_until(lambda: len(asked) == 1)  # at once, not after a period
    page.context.close()
    assert not tab.problems, tab.problems


def test_dashboard_of_an_empty_installation(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    from playwright.sync_api import expect

    require_chromium()
    server = LiveServer(tmp_path / "empty")
    try:
        server.wait_ready()
        tab = _open_dashboard(browser, server, **PHONE)
        page = tab.page
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#traffic-count")).to_have_text("0")
        expect(page.locator("#corrections-empty")).to_be_visible()
        expect(page.locator("#online-empty")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("Updated")
        page.screenshot(path=artifacts / "dashboard-empty-phone.png", full_page=True)
        page.context.close()
        assert not tab.problems, tab.problems
    finally:
        server.stop()
