"""The installable page: the web manifest, the service worker the server writes (its
shell and version), the offline page, and corrections of answers given offline."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec import feedback
from digitrec.api import create_app
from digitrec.api.pwa import Worker
from digitrec.api.web import STATIC_DIR
from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.predict import Predictor
from tests.conftest import (
    BLANK,
    PHONE,
    REPORT_CSP,
    TIMEOUT_MS,
    LiveServer,
    Tab,
    mnist_png,
    require_chromium,
)
from tests.handwriting import DIGITS, placed

OFFLINE = "/api/v1/feedback/offline"


def test_manifest_makes_the_page_installable(client: TestClient) -> None:
    response = client.get("/manifest.webmanifest")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/manifest+json")
    manifest = response.json()
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
    assert manifest["name"] and manifest["short_name"]
    sizes = {}
    for icon in manifest["icons"]:
        got = client.get(icon["src"])
        assert got.status_code == 200, icon["src"]
        if icon["type"] == "image/png":
            side = Image.open(STATIC_DIR / icon["src"].removeprefix("/static/")).size
            assert icon["sizes"] == f"{side[0]}x{side[1]}"
            sizes[icon["purpose"]] = max(side[0], sizes.get(icon["purpose"], 0))
    assert sizes["any"] >= 512 and sizes["maskable"] >= 512  # what Chromium asks for
    assert 'rel="manifest" href="/manifest.webmanifest"' in client.get("/").text


def test_service_worker_lists_the_shell_with_a_version(client: TestClient) -> None:
    response = client.get("/sw.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-cache"
    source = response.text
    assert "__VERSION__" not in source and "__SHELL__" not in source
    shell = json.loads(source.split("const SHELL = ", 1)[1].split(";\n", 1)[0])
    assert {"/", "/offline", "/static/app.js", "/static/style.css"} <= set(shell)
    assert "/static/dashboard.js" not in shell  # the dashboard needs the server anyway
    for url in shell:  # every file the worker caches exists
        assert client.get(url).status_code == 200, url
    assert client.get("/offline").headers["content-type"].startswith("text/html")


def test_a_changed_shell_file_changes_the_version(tmp_path: Path) -> None:
    static = tmp_path / "static"
    (static / "icons").mkdir(parents=True)
    (static / "app.js").write_text("one")
    (static / "dashboard.js").write_text("not in the shell")
    (static / "icons" / "a.png").write_bytes(b"png")
    first = Worker.build(static)
    assert "/static/app.js" in first.shell and "/static/icons/a.png" in first.shell
    assert "/static/dashboard.js" not in first.shell
    (static / "dashboard.js").write_text("changed, but not in the shell")
    assert Worker.build(static).version == first.version
    (static / "app.js").write_text("two")
    second = Worker.build(static)
    assert second.version != first.version and second.version.encode() in second.source


# --- corrections of answers the page gave offline --------------------------------------


def _offline_answer(
    predictor: Predictor, mnist: Mnist, index: int, **changes: Any
) -> dict[str, Any]:
    """What the page's offline engine sends back: the server's own answer for an MNIST
    digit (the engine gives the same), under an id the page made."""
    answer = predictor.predict_bytes(mnist_png(mnist, index))
    body = {
        "prediction_id": uuid.uuid4().hex,
        "answered_at": (datetime.now(UTC) - timedelta(hours=3)).isoformat(),
        "model": {"name": answer.model_name, "version": answer.model_version},
        "digit": answer.digit,
        "confidence": answer.confidence,
        "verdict": answer.verdict,
        "probabilities": list(answer.probabilities),
        "input": base64.b64encode(answer.image.tobytes()).decode(),
        "label": int(mnist.test_labels[index]),
    }
    return {**body, **changes}


@pytest.mark.mnist
def test_offline_corrections_are_stored_once_each(
    client: TestClient, predictor: Predictor, mnist: Mnist
) -> None:
    items = [_offline_answer(predictor, mnist, i) for i in range(3)]
    items[1] = {k: v for k, v in items[1].items() if k != "label"} | {"correct": True}
    response = client.post(OFFLINE, json={"corrections": items})
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == [i["prediction_id"] for i in items]
    again = client.post(OFFLINE, json={"corrections": items[:1]})  # a retry replaces
    assert again.status_code == 200
    service = client.app.state.service  # type: ignore[attr-defined]
    stored = {c.prediction_id: c for c in feedback.list_feedback(service.db)}
    assert set(stored) == {i["prediction_id"] for i in items}
    first = stored[items[0]["prediction_id"]]
    assert first.arm == feedback.OFFLINE_ARM and first.experiment_id is None
    assert first.label == items[0]["label"] and first.model == predictor.ref
    sent = np.frombuffer(base64.b64decode(items[0]["input"]), dtype=np.uint8)
    assert np.array_equal(first.input.ravel(), sent)
    assert stored[items[1]["prediction_id"]].right is True
    data = feedback.feedback_dataset(service.db)  # fine-tuning sees them
    assert set(data.ids) == set(stored)


@pytest.mark.mnist
def test_offline_corrections_that_no_model_gives_are_refused(
    client: TestClient, predictor: Predictor, mnist: Mnist
) -> None:
    good = _offline_answer(predictor, mnist, 0)
    probs = good["probabilities"]
    wrong_digit = (good["digit"] + 1) % 10
    bad = {
        "unknown model": {"model": {"name": "digitnet", "version": "19990101-000000"}},
        "probabilities not adding up": {"probabilities": [0.5] * 10},
        "not the most probable digit": {"digit": wrong_digit, "confidence": probs[wrong_digit]},
        "confidence not the digit's": {"confidence": probs[good["digit"]] / 2},
        "in the future": {"answered_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
        "short input": {"input": base64.b64encode(b"\0" * 100).decode()},
        "not base64": {"input": "!!!!"},
        "nine probabilities": {"probabilities": probs[:9]},
        "label and correct": {"correct": True},
        "extra field": {"arm": "production"},
    }
    for why, change in bad.items():
        body = {"corrections": [good, {**_offline_answer(predictor, mnist, 1), **change}]}
        response = client.post(OFFLINE, json=body)
        assert response.status_code in (404, 422), (why, response.status_code)
        assert response.json()["error"]["code"], why
    assert client.post(OFFLINE, json={"corrections": []}).status_code == 422
    too_many = [good] * 51
    assert client.post(OFFLINE, json={"corrections": too_many}).status_code in (413, 422)
    service = client.app.state.service  # type: ignore[attr-defined]
    assert feedback.list_feedback(service.db) == []  # all or none: nothing was stored


@pytest.mark.mnist
def test_an_answer_of_the_server_cannot_be_overwritten_offline(
    client: TestClient, predictor: Predictor, mnist: Mnist
) -> None:
    served = client.post(
        "/api/v1/predict", content=mnist_png(mnist, 0), headers={"content-type": "image/png"}
    ).json()
    client.app.state.service.log.flush()  # type: ignore[attr-defined]
    forged = _offline_answer(predictor, mnist, 0, prediction_id=served["prediction_id"])
    response = client.post(OFFLINE, json={"corrections": [forged]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_an_offline_answer"


def test_correction_bodies_are_small(client: TestClient) -> None:
    big = json.dumps({"prediction_id": "0" * 32, "label": 1, "pad": "x" * 10_000}).encode()
    response = client.post(
        "/api/v1/feedback", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    huge = b"{" + b" " * 300_000 + b"}"
    response = client.post(OFFLINE, content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_the_page_token_opens_offline_corrections(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=0)
    browser = {"Sec-Fetch-Site": "same-origin"}
    with TestClient(create_app(settings, predictor)) as client:
        assert client.post(OFFLINE, json={"corrections": []}).status_code == 401
        token = client.get("/web/token", headers=browser).json()["token"]
        headers = {"X-Web-Token": token, **browser}
        refused = client.post(OFFLINE, json={"corrections": []}, headers=headers)
        assert refused.status_code == 422  # past the key check: the body is what is wrong


# --- in Chromium: it installs, opens offline, reads drawings offline ---------------------

FIRST_LOAD_MAX = 100_000  # bytes over the network for a first visit (issue #16)


def _open(browser: Any, server: LiveServer, **context: Any) -> Tab:
    page = browser.new_context(**{**PHONE, **context}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(REPORT_CSP)
    tab = Tab(page)
    page.goto(server.url)
    page.locator("#model-accuracy").filter(has_text=re.compile(r"\d")).wait_for()
    return tab


def _controlled(tab: Tab) -> None:
    """Wait for the service worker, then reload so that it controls the page."""
    page = tab.page
    active = """navigator.serviceWorker.ready.then((r) => r.active.state === "activated"
      ? "activated"
      : new Promise((done) => r.active.addEventListener("statechange", (e) => {
          if (e.target.state === "activated") done("activated");
        })))"""
    assert page.evaluate(active) == "activated"
    page.reload()
    page.locator("#model-accuracy").filter(has_text=re.compile(r"\d")).wait_for()
    assert page.evaluate("navigator.serviceWorker.controller !== null")


@pytest.mark.browser
@pytest.mark.server
def test_the_page_installs_and_opens_offline(
    browser: Any, live_server: LiveServer, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    require_chromium()
    context = browser.new_context(**PHONE)
    received: list[int] = []
    context.on("response", lambda r: received.append(_bytes(r)))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(REPORT_CSP)
    tab = Tab(page)
    page.goto(live_server.url)
    page.locator("#model-accuracy").filter(has_text=re.compile(r"\d")).wait_for()
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    page.wait_for_load_state("networkidle")
    first_load = sum(received)
    assert 0 < first_load < FIRST_LOAD_MAX, f"first visit: {first_load} bytes"
    cdp = context.new_cdp_session(page)
    errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
    # Playwright's contexts are incognito, which Chromium reports for any page; every
    # other reason (no manifest, icons, worker, start URL, display mode...) must be absent.
    assert [e["errorId"] for e in errors if e["errorId"] != "in-incognito"] == []
    manifest = cdp.send("Page.getAppManifest")
    assert manifest["errors"] == [] and manifest["url"].endswith("/manifest.webmanifest")
    loaded = page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
    bundle = [u for u in loaded if "onnxruntime" in u or "/model/onnx" in u]
    assert bundle == []  # the offline bundle comes on request only
    _controlled(tab)

    tab.allow("ERR_INTERNET_DISCONNECTED|ERR_FAILED")  # what the page asks for offline
    context.set_offline(True)
    page.reload()  # from the worker's cache: the recognizer, not the browser's error page
    expect(page.locator("#canvas")).to_be_visible()
    expect(page.locator("#message")).to_have_text(BLANK)
    page.screenshot(path=artifacts / "pwa-offline-shell-375x667.png")
    page.goto(f"{live_server.url}/dashboard")  # not in the shell: the offline page says why
    expect(page.locator("h1")).to_contain_text("offline")
    expect(page.locator("body")).to_contain_text("What works offline")
    context.set_offline(False)
    (artifacts / "pwa-first-load.json").write_text(json.dumps({"first_load_bytes": first_load}))
    context.close()
    assert not tab.problems, tab.problems


def _bytes(response: Any) -> int:
    try:
        sizes = response.request.sizes()
    except Exception:  # a response the browser dropped (a redirect, a cancelled request)
        return 0
    return int(sizes["responseBodySize"]) + int(sizes["responseHeadersSize"])


@pytest.mark.browser
@pytest.mark.server
def test_a_drawing_is_read_offline_as_the_server_reads_it(
    browser: Any, live_server: LiveServer, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = _ready_offline(browser, live_server)
    page, context = tab.page, tab.page.context

    strokes = placed(DIGITS["3"], 0.6)
    answer = page.locator("#answer")
    page.evaluate("scrollTo(0, 0)")  # the button is under the answer: back to the pad
    tab.touch(strokes, seed=4)
    expect(answer).to_have_attribute("data-offline", "false")
    expect(answer).to_have_attribute("aria-busy", "false")
    by_server = (page.locator("#digit").inner_text(), page.locator("#top").inner_text())

    tab.allow("ERR_INTERNET_DISCONNECTED|ERR_FAILED")  # what the page asks for offline
    context.set_offline(True)
    page.locator("#clear").click()
    tab.touch(strokes, seed=4)
    expect(answer).to_have_attribute("data-offline", "true")
    assert (page.locator("#digit").inner_text(), page.locator("#top").inner_text()) == by_server
    expect(page.locator("#processing")).to_contain_text("on this device")

    page.reload()  # offline: the page from the worker, the engine from the stored bundle
    tab.touch(strokes, seed=4)
    expect(answer).to_have_attribute("data-offline", "true")
    assert page.locator("#digit").inner_text() == by_server[0]
    page.screenshot(path=artifacts / "pwa-offline-answer-375x667.png")

    label = (int(by_server[0]) + 1) % 10  # a correction made offline
    page.locator(f"#feedback-keys button[data-label='{label}']").click()
    expect(page.locator("#feedback-status")).to_contain_text("Saved on this device")
    stats = _corrections(live_server)
    context.set_offline(False)  # the browser says "online": what waited is sent
    tab.wait_until(lambda: len(_corrections(live_server)) > len(stats), timeout=15)
    newest = _corrections(live_server)[0]
    assert newest["label"] == label and newest["digit"] == int(by_server[0])
    assert newest["right"] is False
    context.close()
    assert not tab.problems, tab.problems


@pytest.mark.browser
@pytest.mark.server
def test_a_drawing_is_read_offline_in_the_chosen_script(
    browser: Any, live_server: LiveServer, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    tab = _ready_offline(browser, live_server)
    page, context = tab.page, tab.page.context
    page.locator("#script").select_option("arabic_indic")  # written right to left

    strokes = placed(DIGITS["0"], 0.6)  # one stroke: one answer to wait for (Arabic-Indic 5)
    answer = page.locator("#answer")
    page.evaluate("scrollTo(0, 0)")
    tab.touch(strokes, seed=5)
    expect(answer).to_have_attribute("data-offline", "false")
    expect(answer).to_have_attribute("aria-busy", "false")
    by_server = [page.locator(f"#{part}").inner_text() for part in ("digit", "top", "message")]
    assert answer.get_attribute("dir") == "rtl"
    assert page.locator("#feedback").is_hidden()  # another script's answer is not kept

    tab.allow("ERR_INTERNET_DISCONNECTED|ERR_FAILED")  # what the page asks for offline
    context.set_offline(True)
    page.reload()  # offline: the page, the engine, both models and the choice from storage
    expect(page.locator("#script")).to_have_value("arabic_indic")
    tab.touch(strokes, seed=5)
    expect(answer).to_have_attribute("data-offline", "true")
    offline = [page.locator(f"#{part}").inner_text() for part in ("digit", "top", "message")]
    print("read in Arabic-Indic, online and offline:", by_server)
    assert offline == by_server
    assert answer.get_attribute("dir") == "rtl"
    assert page.locator("#feedback").is_hidden()
    page.screenshot(path=artifacts / "pwa-offline-script-375x667.png")
    context.set_offline(False)
    context.close()
    assert not tab.problems, tab.problems


def _ready_offline(browser: Any, live_server: LiveServer) -> Any:
    """A tab whose page is controlled by the worker, with "Use offline" turned on."""
    from playwright.sync_api import expect

    require_chromium()
    tab = _open(browser, live_server)
    _controlled(tab)
    toggle = tab.page.locator("#offline-toggle")
    expect(tab.page.locator("#offline-status")).to_contain_text("MB once")
    toggle.click()
    expect(tab.page.locator("#offline-status")).to_contain_text("Ready offline", timeout=60_000)
    expect(toggle).to_have_attribute("aria-pressed", "true")
    return tab


def _corrections(server: LiveServer) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/api/v1/stats", timeout=10) as response:
        return list(json.loads(response.read())["corrections"])
