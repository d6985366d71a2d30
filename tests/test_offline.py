"""The offline mode's engine (#16): the metadata and ONNX endpoints, and the in-browser
engine (static/offline/) against the server, drawing for drawing, in Debian's Chromium;
with the script model (#14), digits of other scripts too: held-out font digits read in
their script and with ``auto``, on the device as on the server.

The drawings are painted by the page's own export code: ``paint``, ``exportPen`` and
``exportDrawing`` and their constants are read from static/app.js and run in the page
(app.js exports nothing), so the pen rule is the page's, never a copy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec import preprocess
from digitrec.api import create_app
from digitrec.api.offline import RUNTIME_DIR
from digitrec.config import Settings
from digitrec.keys import KeyStore
from digitrec.multiscript import CLOSE, REJECTED, SURE, load_shipped
from digitrec.predict import Predictor
from digitrec.preprocess import _border_strips, _median
from digitrec.registry import ModelEntry
from digitrec.scripts import digit_char
from tests.conftest import REPORT_CSP, LiveServer, reload_keys
from tests.handwriting import DIGITS, Point, placed, trace
from tests.test_multiscript import held_out_digits

OFFLINE = "/api/v1/model/offline"
ONNX = "/api/v1/model/onnx"
SCRIPTS_ONNX = "/api/v1/model/scripts/onnx"
BROWSER = {"Sec-Fetch-Site": "same-origin"}  # what Chromium sends for the page's own fetches
GOLDEN = Path(__file__).parent / "golden"
APP_JS = Path(__file__).resolve().parent.parent / "src" / "digitrec" / "web" / "static" / "app.js"
GENERATED = 300  # drawings made up for the comparison, besides the ten digits
UNEVEN_LIGHTING = 0.08  # preprocess.ink_map: edges' medians further apart are flattened
PROB_TOLERANCE = 1e-4  # in-browser vs server probabilities (both round to 6 decimals)
# Held-out font digits read on the device and on the server: all of held_out_digits' 40
# (four of each value) in these scripts, so that whatever the script model, some are read
# as uncertain, unsure or not a digit.
FONT_SCRIPTS = ("devanagari", "thai", "arabic_indic", "bengali")


# --- the endpoints ------------------------------------------------------------------------


def test_metadata_is_the_manifests(client: TestClient, bundled_entry: ModelEntry) -> None:
    manifest = bundled_entry.manifest
    meta = client.get(OFFLINE).json()
    assert meta["model"] == {
        "name": bundled_entry.name,
        "version": bundled_entry.version,
        "ref": bundled_entry.ref,
    }
    assert meta["labels"] == manifest["labels"]
    assert meta["preprocessing"] == manifest["preprocessing"]
    assert meta["temperature"] == manifest["calibration"]["temperature"]
    rejection = manifest["rejection"]
    assert meta["rejection"] == {k: rejection[k] for k in ("method", "accept", "reject")}
    assert meta["pipeline"]["mark_level"] == preprocess.MARK_LEVEL
    assert meta["pipeline"]["restroke_side"] == preprocess.RESTROKE_SIDE
    onnx = manifest["files"]["model.onnx"]
    assert meta["onnx"] == {
        "url": f"{ONNX}?v={bundled_entry.version}",
        "sha256": onnx["sha256"],
        "bytes": onnx["bytes"],
    }
    lock = json.loads((RUNTIME_DIR / "package-lock.json").read_text())
    assert meta["runtime"]["version"] == lock["packages"]["node_modules/onnxruntime-web"]["version"]
    sizes = [f["bytes"] for f in meta["runtime"]["files"]]
    assert sizes == [(RUNTIME_DIR / f["name"]).stat().st_size for f in meta["runtime"]["files"]]
    scripts = meta["script_model"]["onnx"]["bytes"]
    assert meta["bundle_bytes"] == onnx["bytes"] + scripts + sum(sizes)


def test_metadata_announces_the_script_model(client: TestClient) -> None:
    model = load_shipped()
    assert model is not None
    announced = client.get(OFFLINE).json()["script_model"]
    onnx = announced.pop("onnx")
    assert announced == {
        "version": model.version,
        "scripts": [
            {
                "name": name,
                "digits": [digit_char(name, d) for d in range(10)],
                "right_to_left": name in ("arabic_indic", "persian"),
            }
            for name in model.manifest["scripts"]
        ],
        "classes": model.classes,
        "not_a_digit": model.manifest["not_a_digit"],
        "preprocessing": {k: model.manifest["preprocessing"][k] for k in ("mean", "std")},
        "auto": {k: model.manifest["auto"][k] for k in ("latin_keep", "foreign_sure")},
        "close": CLOSE,
        "sure": SURE,
        "rejected": list(REJECTED),
    }
    sha = model.manifest["sha256"]
    assert onnx == {
        "url": f"{SCRIPTS_ONNX}?v={model.version}",
        "sha256": sha,
        "bytes": model.path.stat().st_size,
    }
    response = client.get(onnx["url"])
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha
    assert len(response.content) == onnx["bytes"]
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{sha}"'
    assert "immutable" in response.headers["cache-control"]
    assert client.get(SCRIPTS_ONNX).headers["cache-control"] == "no-cache"
    again = client.get(onnx["url"], headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and not again.content


def test_without_a_script_model_the_metadata_says_so(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, rate_limit_per_minute=0, scripts=False)
    with TestClient(create_app(settings, predictor)) as client:
        meta = client.get(OFFLINE).json()
        assert meta["script_model"] is None
        runtime = sum(f["bytes"] for f in meta["runtime"]["files"])
        assert meta["bundle_bytes"] == meta["onnx"]["bytes"] + runtime
        missing = client.get(SCRIPTS_ONNX)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


def test_onnx_file_is_the_models_and_cached_by_version(
    client: TestClient, bundled_entry: ModelEntry
) -> None:
    sha = bundled_entry.manifest["files"]["model.onnx"]["sha256"]
    url = client.get(OFFLINE).json()["onnx"]["url"]
    response = client.get(url)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{sha}"'
    assert "immutable" in response.headers["cache-control"]
    assert client.get(ONNX).headers["cache-control"] == "no-cache"  # no version: revalidate
    again = client.get(url, headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and not again.content
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_runtime_is_served_as_webassembly_under_the_csp(client: TestClient) -> None:
    meta = client.get(OFFLINE).json()
    module, wasm = (client.get(f["url"]) for f in meta["runtime"]["files"])
    assert module.headers["content-type"].startswith("text/javascript")
    assert wasm.headers["content-type"] == "application/wasm"
    assert len(wasm.content) == meta["runtime"]["files"][1]["bytes"]
    csp = wasm.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["script-src"] == ["'self'", "'wasm-unsafe-eval'"]  # no JS eval


@pytest.fixture
def keyed(tmp_path: Path, predictor: Predictor) -> Iterator[tuple[TestClient, KeyStore]]:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=0)
    with TestClient(create_app(settings, predictor)) as test_client:
        yield test_client, KeyStore.from_settings(settings)


@pytest.mark.parametrize("path", [OFFLINE, ONNX, SCRIPTS_ONNX])
def test_access_as_for_the_model_card(keyed: tuple[TestClient, KeyStore], path: str) -> None:
    client, store = keyed
    assert client.get(path).status_code == 401
    _, secret = store.create("offline")
    reload_keys(client)
    assert client.get(path, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    token = client.get("/web/token", headers=BROWSER).json()["token"]
    assert client.get(path, headers={"X-Web-Token": token, **BROWSER}).status_code == 200
    cross = {"X-Web-Token": token, "Sec-Fetch-Site": "cross-site"}
    assert client.get(path, headers=cross).status_code == 401


def test_openapi_documents_both(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    offline = paths[OFFLINE]["get"]["responses"]["200"]["content"]["application/json"]
    assert offline["schema"]["$ref"].endswith("/OfflineModel")
    for path in (ONNX, SCRIPTS_ONNX):
        assert "application/octet-stream" in paths[path]["get"]["responses"]["200"]["content"]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "script_model" in schemas["OfflineModel"]["properties"]


# --- the engine in the browser, against the server ------------------------------------------


def page_export_code() -> str:
    """app.js's export path (its constants, ``paint``, ``exportPen``, ``exportDrawing``),
    read from the file, wrapped so a test can set the strokes."""
    source = APP_JS.read_text()
    constants = re.findall(r"^const (?:EXPORT_\w+|PEN_WIDTH) = [^;]*;", source, re.M)
    functions = [
        re.search(rf"^function {name}\(.*?^}}$", source, re.M | re.S)
        for name in ("paint", "exportPen", "exportCanvas", "exportDrawing")
    ]
    assert len(constants) >= 4 and all(functions), "app.js's export code moved"
    body = "\n".join([*constants, *(f.group(0) for f in functions if f)])
    return f"""(() => {{ let strokes = [];
{body}
window.exportStrokes = (s) => {{ strokes = s; return exportDrawing(); }};
}})()"""


# In the page: each drawing (strokes, or a PNG's base64) as the page exports it, read by
# the engine from its pixels and by the server from its PNG, in the drawing's ``script``
# (Latin when it has none).
COMPARE = """async (drawings) => {
  const { callApi } = await import("/static/api.js");
  const pixels = async (blob) => {
    const bitmap = await createImageBitmap(blob, { premultiplyAlpha: "none" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0);
    return context.getImageData(0, 0, bitmap.width, bitmap.height);
  };
  const out = [];
  for (const drawing of drawings) {
    const blob = drawing.png
      ? new Blob([Uint8Array.from(atob(drawing.png), (c) => c.charCodeAt(0))],
                 { type: "image/png" })
      : await window.exportStrokes(drawing.strokes);
    const script = drawing.script ?? "latin";
    const server = await callApi(`/api/v1/predict?include_input=true&top_k=3&script=${script}`, {
      method: "POST", body: blob, headers: { "Content-Type": "image/png" },
    }).catch((e) => ({ error: e.code }));
    let offline;
    try {
      offline = await window.engine.predict(await pixels(blob), 3, script);
      offline.input = Array.from(offline.input);
    } catch (e) {
      offline = { error: e.code };
    }
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let png = "";
    for (const byte of bytes) png += String.fromCharCode(byte);
    out.push({ server, offline, png: btoa(png) });
  }
  return out;
}"""


def drawings() -> list[dict[str, Any]]:
    """The ten digits as the browser tests write them, then ``GENERATED`` made-up ones:
    any digit, seed, size, place and shake."""
    out: list[dict[str, Any]] = []
    for digit, strokes in DIGITS.items():
        out.append({"name": f"digit {digit}", "strokes": shaky(placed(strokes, 0.6), 0, 0.003)})
    rng = random.Random(16)
    for n in range(GENERATED):
        digit = rng.choice(sorted(DIGITS))
        height = rng.uniform(0.12, 0.9)
        strokes = placed(DIGITS[digit], height)
        if rng.random() < 0.7:  # anywhere on the pad, rather than in the middle
            width = max(x for s in strokes for x, _ in s) - min(x for s in strokes for x, _ in s)
            corner = (rng.uniform(0.02, 0.98 - width), rng.uniform(0.02, 0.98 - height))
            strokes = placed(DIGITS[digit], height, corner)
        strokes = shaky(strokes, n, rng.uniform(0, 0.012))
        out.append({"name": f"generated {n}: {digit}", "strokes": strokes})
    return out


def shaky(strokes: list[list[Point]], seed: int, shake: float) -> list[list[Point]]:
    return [trace(s, shake=shake, seed=seed + i) for i, s in enumerate(strokes)]


def decoded(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.int16)


def lit_unevenly(png: str) -> bool:
    """Does the server take ink_map's uneven-lighting branch for this drawing?"""
    alpha = Image.open(io.BytesIO(base64.b64decode(png))).getchannel("A")
    ink = np.asarray(alpha, dtype=np.float32) / 255
    levels = [_median(strip) for strip in _border_strips(ink)]
    return max(levels) - min(levels) > UNEVEN_LIGHTING


@pytest.fixture(scope="module")
def engine_page(browser: Any, live_server: LiveServer) -> Iterator[tuple[Any, Any, list[str]]]:
    """The server's page with the engine loaded in it (as 'Use offline' would)."""
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.add_init_script(REPORT_CSP)
    page.goto(live_server.url)
    page.wait_for_load_state("networkidle")
    first = page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
    # The first load reads the metadata (about 2 KB: it states the bundle's size on the
    # page) but none of the bundle: the engine, ONNX Runtime Web, the model.
    bundle = ("/static/offline/", "onnxruntime", "/api/v1/model/onnx")
    assert not [url for url in first if any(part in url for part in bundle)], first
    page.evaluate(page_export_code())
    page.evaluate("""async () => {
      const started = performance.now();
      const { loadEngine } = await import("/static/offline/engine.js");
      window.engine = await loadEngine();
      window.engineLoadMs = performance.now() - started;
    }""")
    try:
        yield page, context, problems
    finally:
        context.close()


def test_engine_answers_as_the_server(
    engine_page: tuple[Any, Any, list[str]], artifacts: Path
) -> None:
    page, _, problems = engine_page
    cases = drawings()
    golden = [GOLDEN / "canvas_transparent_7.png", GOLDEN / "canvas_dark_2.png"]
    cases += [{"name": p.name, "png": base64.b64encode(p.read_bytes()).decode()} for p in golden]
    results = page.evaluate(COMPARE, [{k: v for k, v in c.items() if k != "name"} for c in cases])

    mads, times, mismatches, to_server = [], [], [], []
    flattened = 0  # drawings whose ink along an edge the server flattens as lighting
    prob_gap = 0.0
    for case, result in zip(cases, results, strict=True):
        server, offline = result["server"], result["offline"]
        name = case["name"]
        if offline.get("error") == "needs_server":
            to_server.append(name)  # not a plain drawing: the page sends it to the server
            continue
        if "error" in server or "error" in offline:
            if server.get("error") != offline.get("error"):
                mismatches.append(f"{name}: server {server}, offline {offline}")
            continue
        flattened += lit_unevenly(result["png"])
        seen = np.asarray(offline["input"], dtype=np.int16).reshape(28, 28)
        mad = float(np.abs(seen - decoded(server["input_image"])).mean()) / 255
        mads.append(mad)
        times.append(offline["processing_ms"])
        same = (
            mad <= 1 / 255
            and offline["digit"] == server["digit"]
            and offline["verdict"] == server["verdict"]
            and [t["digit"] for t in offline["top"]] == [t["digit"] for t in server["top"]]
        )
        gaps = [
            abs(a["probability"] - b["probability"])
            for a, b in zip(offline["top"], server["top"], strict=True)
        ]
        gaps.append(abs(offline["digit_score"] - server["digit_score"]))
        prob_gap = max(prob_gap, *gaps)
        if not same or max(gaps) > PROB_TOLERANCE:
            mismatches.append(
                f"{name}: MAD {mad * 255:.3f}/255, server {server['top']} "
                f"{server['verdict']}, offline {offline['top']} {offline['verdict']}"
            )
    figures = {
        "compared": len(mads),
        "sent_to_server": len(to_server),
        "max_mad_levels": round(max(mads) * 255, 4),
        "mismatches": len(mismatches),
        "lighting_flattened": flattened,
        "max_probability_gap": prob_gap,
        "predict_ms_p50": statistics.median(times),
    }
    print("offline engine vs server:", figures, "needs server:", to_server)
    (artifacts / "offline_engine.json").write_text(json.dumps(figures, indent=2))
    assert not mismatches, mismatches[:10]
    assert flattened > 0  # the port of _flatten_lighting was compared too
    assert to_server == ["canvas_dark_2.png"]  # an opaque image: only the server prepares it
    assert not problems


def test_engine_works_with_the_network_cut(
    engine_page: tuple[Any, Any, list[str]], artifacts: Path
) -> None:
    page, context, problems = engine_page
    case = {"strokes": shaky(placed(DIGITS["4"], 0.5), 4, 0.003)}
    online = page.evaluate(COMPARE, [case])[0]["server"]
    context.set_offline(True)
    try:
        cut = page.evaluate("() => fetch('/healthz').then(() => 'reached', () => 'cut')")
        assert cut == "cut"
        answer = page.evaluate(
            """async (strokes) => {
              const blob = await window.exportStrokes(strokes);
              const bitmap = await createImageBitmap(blob, { premultiplyAlpha: "none" });
              const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
              const context = canvas.getContext("2d");
              context.drawImage(bitmap, 0, 0);
              const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height);
              const answer = await window.engine.predict(pixels, 3);
              return { ...answer, input: Array.from(answer.input) };
            }""",
            case["strokes"],
        )
    finally:
        context.set_offline(False)
    assert (answer["digit"], answer["verdict"]) == (online["digit"], online["verdict"])
    assert [t["digit"] for t in answer["top"]] == [t["digit"] for t in online["top"]]
    for mine, theirs in zip(answer["top"], online["top"], strict=True):
        assert abs(mine["probability"] - theirs["probability"]) <= PROB_TOLERANCE
    page.screenshot(path=str(artifacts / "offline_engine.png"))
    problems[:] = [p for p in problems if "ERR_INTERNET_DISCONNECTED" not in p]
    assert not problems


def as_drawing(image: np.ndarray, scale: int = 8) -> str:
    """A 28x28 digit (light on dark) as the pad exports a drawing: dark ink whose alpha is
    the digit, on a transparent background, ``scale`` times larger; base64 of its PNG."""
    side = image.shape[0] * scale
    alpha = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
    drawing = Image.new("RGBA", (side, side), (20, 20, 20, 0))
    drawing.putalpha(alpha)
    out = io.BytesIO()
    drawing.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def font_drawings() -> list[dict[str, Any]]:
    """Held-out font digits (``FONT_SCRIPTS``), each read in its script and with auto;
    and three drawn Latin digits with auto (its Latin side)."""
    out: list[dict[str, Any]] = []
    for script in FONT_SCRIPTS:
        images, labels = held_out_digits(script)
        for image, label in zip(images, labels.tolist(), strict=True):
            png = as_drawing(image)
            for asked in (script, "auto"):
                out.append({"name": f"{script} {label} as {asked}", "png": png, "script": asked})
    for digit in ("1", "4", "7"):
        strokes = shaky(placed(DIGITS[digit], 0.6), 0, 0.003)
        out.append({"name": f"latin {digit} as auto", "strokes": strokes, "script": "auto"})
    return out


def reading(answer: dict[str, Any]) -> dict[str, Any]:
    """What an answer says, with its probabilities left out (compared within a tolerance)."""
    return {
        "digit": answer["digit"],
        "character": answer["character"],
        "script": answer["script"],
        "verdict": answer["verdict"],
        "is_digit": answer["is_digit"],
        "script_uncertain": answer["script_uncertain"],
        "top": [(t["digit"], t["character"]) for t in answer["top"]],
        "alternatives": [(a["script"], a["digit"], a["character"]) for a in answer["alternatives"]],
        "scored": answer.get("digit_score") is not None,
    }


def probabilities(answer: dict[str, Any]) -> list[float]:
    found = [t["probability"] for t in answer["top"]] + [answer["confidence"]]
    found += [a["probability"] for a in answer["alternatives"]]
    return found + ([answer.get("digit_score")] if answer.get("digit_score") is not None else [])


def test_engine_reads_other_scripts_as_the_server(
    engine_page: tuple[Any, Any, list[str]], artifacts: Path
) -> None:
    page, _, problems = engine_page
    cases = font_drawings()
    asked = [{k: v for k, v in c.items() if k != "name"} for c in cases]
    results = page.evaluate(COMPARE, asked)
    mismatches, scripts, verdicts, uncertain = [], set(), set(), 0
    for case, result in zip(cases, results, strict=True):
        server, offline = result["server"], result["offline"]
        assert "error" not in server and "error" not in offline, (case["name"], result)
        seen = np.asarray(offline["input"], dtype=np.int16).reshape(28, 28)
        mad = float(np.abs(seen - decoded(server["input_image"])).mean()) / 255
        gaps = [
            abs(a - b) for a, b in zip(probabilities(offline), probabilities(server), strict=True)
        ]
        if mad > 1 / 255 or reading(offline) != reading(server) or max(gaps) > PROB_TOLERANCE:
            mismatches.append(
                f"{case['name']}: server {reading(server)}, offline {reading(offline)}"
            )
        scripts.add(server["script"])
        verdicts.add(server["verdict"])
        uncertain += server["script_uncertain"]
    figures = {
        "compared": len(cases),
        "scripts": sorted(scripts),
        "verdicts": sorted(verdicts),
        "uncertain": uncertain,
    }
    print("offline engine vs server, other scripts:", figures)
    (artifacts / "offline_engine_scripts.json").write_text(json.dumps(figures, indent=2))
    assert not mismatches, mismatches
    # Every path of the port was compared: each script given, Latin kept by auto, auto's
    # other scripts, its uncertain answers (alternatives), and the verdicts.
    assert {"latin", *FONT_SCRIPTS} <= scripts
    assert uncertain > 0 and {"digit", "unsure", "not_a_digit"} <= verdicts
    assert not problems


def test_engine_reads_a_script_with_the_network_cut(
    engine_page: tuple[Any, Any, list[str]],
) -> None:
    page, context, problems = engine_page
    images, _ = held_out_digits("thai")
    case = {"png": as_drawing(images[35]), "script": "thai"}  # an 8
    online = page.evaluate(COMPARE, [case])[0]["server"]
    assert online["script"] == "thai"
    context.set_offline(True)
    try:
        assert page.evaluate("() => fetch('/healthz').then(() => 'reached', () => 'cut')") == "cut"
        offline = page.evaluate(COMPARE, [case])[0]["offline"]
    finally:
        context.set_offline(False)
    assert reading(offline) == reading(online)
    assert (offline["script"], offline["character"]) == (
        "thai",
        digit_char("thai", offline["digit"]),
    )
    problems[:] = [p for p in problems if "ERR_INTERNET_DISCONNECTED" not in p]
    assert not problems


def test_bundle_size_is_what_the_metadata_says(engine_page: tuple[Any, Any, list[str]]) -> None:
    page, _, problems = engine_page
    meta = page.evaluate("window.engine.meta")
    urls = [f["url"] for f in meta["runtime"]["files"]] + [meta["onnx"]["url"]]
    urls.append(meta["script_model"]["onnx"]["url"])  # downloaded too: digits of other scripts
    sizes = page.evaluate(
        """(urls) => urls.map((url) => performance.getEntriesByType("resource")
             .filter((e) => e.name.endsWith(url)).map((e) => e.decodedBodySize)[0])""",
        urls,
    )
    print("offline bundle bytes:", dict(zip(urls, sizes, strict=True)), "total", sum(sizes))
    print("engine loaded in", round(page.evaluate("window.engineLoadMs")), "ms (loopback)")
    assert sum(sizes) == meta["bundle_bytes"] == page.evaluate("window.engine.bundleBytes")
    assert page.evaluate("window.engine.verified")  # the model's sha256 was checked
    assert not problems
