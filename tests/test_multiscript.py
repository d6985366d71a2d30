"""Digits of other scripts (#14): the shipped script model reads digits drawn from fonts
it never saw, with the script given and with ``auto``; Latin answers stay the digit
model's; the API, the model card and the CLI speak of scripts; bad names are 400s.

Test digits are drawn here from the held-out font families (``script_digits``), a few
per digit; a script whose fonts are missing is skipped locally and fails in CI.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from digitrec import multiscript
from digitrec import script_digits as sd
from digitrec.data import Mnist
from digitrec.errors import ModelInvalid
from digitrec.multiscript import ScriptModel, load_shipped, read_in
from digitrec.numbers.reader import read_number
from digitrec.predict import Predictor
from digitrec.preprocess import to_png
from digitrec.scripts import digit_char
from tests.conftest import run_cli
from tests.test_script_digits import fonts_or_skip

PER_DIGIT = 4  # test digits of each value, drawn from held-out fonts
CHECKED = ("devanagari", "thai", "arabic_indic")


@pytest.fixture(scope="module")
def model() -> ScriptModel:
    found = load_shipped()
    assert found is not None, "no script model is shipped in src/digitrec/script_model/"
    return found


def held_out_digits(script: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``PER_DIGIT`` images of each digit from the fonts the model never trained on."""
    fonts = fonts_or_skip(script)
    return sd.render(fonts.held_out, script, PER_DIGIT, np.random.default_rng(seed))


def test_the_shipped_model_reads_several_scripts_and_is_verified(
    model: ScriptModel, tmp_path: Path
) -> None:
    assert model.scripts[0] == "latin" and len(model.scripts) >= 7  # Latin and six more
    copy = tmp_path / model.version
    shutil.copytree(multiscript.shipped_folder(), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelInvalid, match="hash"):
        ScriptModel(copy)


@pytest.mark.parametrize("script", CHECKED)
def test_held_out_fonts_are_read_with_the_script_given_and_with_auto(
    script: str, predictor: Predictor
) -> None:
    images, labels = held_out_digits(script)
    given, auto = [], []
    for image, label in zip(images, labels, strict=True):
        answer = predictor.predict_bytes(to_png(image))
        mine = read_in(answer, script, 3)
        assert mine.script == script
        assert {mine.character, *(digit_char(script, d) for d, _ in mine.top)} <= {
            digit_char(script, d) for d in range(10)
        }  # only that script's digits are candidates
        given.append(mine.digit == label)
        auto.append(read_in(answer, "auto", 3).digit == label)
    # 40 digits (fixed seed): the benchmark's figures are on thousands; these floors catch a
    # broken path (auto reads Arabic-Indic worst: 73 % in the benchmark)
    assert np.mean(given) >= 0.85, (script, np.mean(given))
    assert np.mean(auto) >= 0.6, (script, np.mean(auto))


def test_auto_weighs_a_glyph_two_scripts_share_by_its_value(
    model: ScriptModel, predictor: Predictor, mnist: Mnist
) -> None:
    # Arabic-Indic ٣ and Persian ۳ are one glyph: the script model splits 0.6 between
    # them, against 0.36 for a Latin 7. By script alone Latin wins; by value, 3 does,
    # and Latin's 7 stays as the alternative that makes the script uncertain.
    answer = predictor.predict_bytes(to_png(mnist.test_images[0]))
    probs = np.full(model.classes, 1e-4)
    latin, ai, fa = (model.scripts.index(s) for s in ("latin", "arabic_indic", "persian"))
    probs[10 * latin + 7], probs[10 * ai + 3], probs[10 * fa + 3] = 0.36, 0.3, 0.3
    # Unsure, as the digit model might be: auto's threshold for keeping an accepted
    # Latin digit does not apply.
    unsure = dataclasses.replace(answer, digit=7, verdict="unsure")
    read = model.read(np.log(probs), unsure, "auto", 3)
    assert (read.digit, read.script, read.character) == (3, "arabic_indic", "٣")
    assert read.script_uncertain and read.verdict == "unsure"
    assert [(a.script, a.digit) for a in read.alternatives] == [("latin", 7)]
    assert read.top[0] == (3, pytest.approx(0.6 / probs[10:80].sum(), abs=1e-3))


def test_auto_keeps_not_a_digit_but_guesses_the_value_in_the_script_that_holds_it(
    model: ScriptModel, predictor: Predictor, mnist: Mnist
) -> None:
    # An Arabic-Indic ٧ in a font never trained on: the digit model calls the V "not a
    # digit" (its guess, a Latin 4, means nothing) and the script model is torn between
    # ٧ and "not a digit". The verdict stands; the value is the other scripts' best
    # guess, as a script given would read it, not the digit model's Latin one.
    answer = predictor.predict_bytes(to_png(mnist.test_images[0]))
    rejected = dataclasses.replace(answer, digit=4, verdict="not_a_digit")
    probs = np.full(model.classes, 1e-4)
    latin, ai = model.scripts.index("latin"), model.scripts.index("arabic_indic")
    probs[10 * ai + 7], probs[-1], probs[10 * latin + 4] = 0.4, 0.45, 0.1
    read = model.read(np.log(probs), rejected, "auto", 3)
    assert (read.digit, read.script, read.verdict) == (7, "arabic_indic", "not_a_digit")
    assert read.digit == model.read(np.log(probs), rejected, "arabic_indic", 3).digit
    # Where Latin holds more than the other scripts, the digit model's answer stands.
    probs[10 * latin + 4] = 0.5
    assert model.read(np.log(probs), rejected, "auto", 3) == dataclasses.replace(
        rejected, script="latin"
    )


def test_latin_stays_the_digit_models_answer(predictor: Predictor, mnist) -> None:  # type: ignore[no-untyped-def]
    images, labels = mnist.test_images[:300], mnist.test_labels[:300]
    same, right = 0, 0
    for image, label in zip(images, labels, strict=True):
        answer = predictor.predict_bytes(to_png(image))
        assert read_in(answer, "latin", 3) == answer  # untouched
        auto = read_in(answer, "auto", 3)
        same += auto.digit == answer.digit
        right += auto.digit == label
    assert same >= 298 and right >= 297, (same, right)


def test_auto_reads_latin_digits_as_people_upload_them(predictor: Predictor, mnist) -> None:  # type: ignore[no-untyped-def]
    # Canvas exports, photos, JPEG screenshots, light on dark (the realistic variants of
    # the performance section): the marks of an upload must not pull a Latin digit
    # towards another script (the model before this test read 170 of these 180 right).
    from digitrec.realistic import LIGHT_ON_DARK, VARIANTS, realistic_set

    files = realistic_set(
        mnist.test_images[:12], mnist.test_labels[:12], 12, 3, {**VARIANTS, **LIGHT_ON_DARK}
    )
    right = 0
    for _, label, raw in files:
        auto = read_in(predictor.predict_bytes(raw), "auto", 3)
        right += auto.digit == label
    assert right >= 0.97 * len(files), (right, len(files))
    golden = Path(__file__).parent / "golden"
    for name, digit in (("canvas_transparent_7.png", 7), ("canvas_dark_2.png", 2)):
        auto = read_in(predictor.predict_bytes((golden / name).read_bytes()), "auto", 3)
        assert (auto.digit, auto.script) == (digit, "latin"), name


def test_the_api_takes_a_script_and_says_which(client: TestClient) -> None:
    images, labels = held_out_digits("devanagari")
    png = to_png(images[int(np.flatnonzero(labels == 7)[0])])
    answer = client.post(
        "/api/v1/predict?script=devanagari", content=png, headers={"Content-Type": "image/png"}
    ).json()
    assert answer["script"] == "devanagari"
    assert answer["character"] == digit_char("devanagari", answer["digit"])
    assert all(t["character"] == digit_char("devanagari", t["digit"]) for t in answer["top"])
    plain = client.post("/api/v1/predict", content=png, headers={"Content-Type": "image/png"})
    assert plain.status_code == 200 and plain.json()["script"] == "latin"  # the default
    unknown = client.post(
        "/api/v1/predict?script=klingon", content=png, headers={"Content-Type": "image/png"}
    )
    assert unknown.status_code == 400 and "unknown script" in unknown.json()["error"]["message"]
    not_read = client.post(
        "/api/v1/predict?script=ol_chiki", content=png, headers={"Content-Type": "image/png"}
    )
    assert not_read.status_code == 400
    assert not_read.json()["error"]["code"] == "unsupported_script"


def test_the_model_card_lists_the_scripts(client: TestClient, model: ScriptModel) -> None:
    card = client.get("/api/v1/model").json()
    names = [s["name"] for s in card["scripts"]]
    assert names == list(model.scripts)
    arabic = next(s for s in card["scripts"] if s["name"] == "arabic_indic")
    assert arabic["right_to_left"] and arabic["digits"] == "٠١٢٣٤٥٦٧٨٩"
    assert all(0.5 < s["held_out_accuracy"] <= 1 for s in card["scripts"])


def test_the_cli_reads_in_a_script(tmp_path: Path) -> None:
    images, labels = held_out_digits("thai")
    path = tmp_path / "thai.png"
    path.write_bytes(to_png(images[int(np.flatnonzero(labels == 3)[0])]))
    result = run_cli("predict", "--script", "thai", "--json", str(path), home=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["script"] == "thai" and answer["character"] == digit_char("thai", answer["digit"])
    bad = run_cli("predict", "--script", "klingon", str(path), home=tmp_path)
    assert bad.returncode != 0 and "unknown script" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.browser
@pytest.mark.server
def test_the_page_picks_a_script_remembers_it_and_shows_the_digit_in_it(
    open_tab,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    images, labels = held_out_digits("devanagari")
    upload = tmp_path / "seven.png"
    upload.write_bytes(to_png(images[int(np.flatnonzero(labels == 7)[0])]))
    tab = open_tab()
    page = tab.page
    expect(page.locator("#script-pick")).to_be_visible()
    page.select_option("#script", "devanagari")
    page.set_input_files("#file", upload)
    expect(page.locator("#digit")).to_have_text(digit_char("devanagari", 7))
    expect(page.locator("#message")).to_contain_text("Devanagari")
    page.reload()  # the choice is remembered
    expect(page.locator("#script")).to_have_value("devanagari")
    page.select_option("#script", "arabic_indic")
    arabic, arabic_labels = held_out_digits("arabic_indic")
    other = tmp_path / "arabic.png"
    other.write_bytes(to_png(arabic[int(np.flatnonzero(arabic_labels == 2)[0])]))
    page.set_input_files("#file", other)
    expect(page.locator("#digit")).to_have_text(digit_char("arabic_indic", 2))
    expect(page.locator("#answer")).to_have_attribute("dir", "rtl")

    # A number, in the script chosen: its characters and its value, a box per digit.
    page.select_option("#script", "devanagari")
    page.locator("#mode-number").click()
    number = tmp_path / "number.png"
    number.write_bytes(to_png(devanagari_number(images, labels, (2, 0, 7))))
    page.set_input_files("#file", number)
    expect(page.locator("#digit")).to_contain_text(" = ")
    characters, value = page.locator("#digit").inner_text().split(" = ")
    assert characters == "".join(digit_char("devanagari", int(v)) for v in value)
    boxes = page.locator("#boxes button").all_inner_texts()
    assert len(boxes) == 3 and all(b in "".join(DEVANAGARI) for b in boxes), boxes


DEVANAGARI = [digit_char("devanagari", d) for d in range(10)]


def devanagari_number(
    images: np.ndarray, labels: np.ndarray, digits: tuple[int, ...]
) -> np.ndarray:
    """Held-out font digits side by side, with gaps, on a margin: one image."""
    picks = [int(np.flatnonzero(labels == d)[0]) for d in digits]
    gap = np.zeros((28, 12), np.uint8)
    strip = np.concatenate([gap, *[np.hstack([images[i], gap]) for i in picks]], axis=1)
    return np.pad(strip, 12)


def test_a_number_is_read_in_one_script(client: TestClient) -> None:
    images, labels = held_out_digits("devanagari")
    strip = devanagari_number(images, labels, (2, 0, 7))
    answer = client.post(
        "/api/v1/number?script=devanagari",
        content=to_png(strip),
        headers={"Content-Type": "image/png"},
    ).json()
    assert answer["script"] == "devanagari" and len(answer["digits"]) == 3
    assert answer["characters"] == "".join(
        digit_char("devanagari", int(v)) for v in answer["number"]
    )
    assert all(d["character"] == digit_char("devanagari", d["digit"]) for d in answer["digits"])
    assert sum(a == b for a, b in zip(answer["number"], "207", strict=False)) >= 2, answer["number"]
    latin = client.post(
        "/api/v1/number", content=to_png(strip), headers={"Content-Type": "image/png"}
    ).json()
    assert latin["script"] == "latin"  # the default reads Latin digits only


def written_numbers(script: str, count: int, seed: int = 5) -> list[tuple[bytes, str]]:
    """``count`` numbers of 2-4 held-out-font digits, written and exported as a canvas
    is (``numbers.synth``): the file and its digits."""
    from digitrec.numbers.synth import make_number

    images, labels = held_out_digits(script)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        picks = rng.integers(0, len(labels), size=int(rng.integers(2, 5)))
        made = make_number([images[i] for i in picks], [int(labels[i]) for i in picks], rng)
        out.append((made.data, made.text))
    return out


def test_a_number_in_another_script_is_not_cut_as_latin_digits(
    client: TestClient, predictor: Predictor, model: ScriptModel
) -> None:
    # Tamil digits are wide and unlike Latin ones: cut where Latin digits would be (the
    # digit model's and the Latin sequence reader's cuts), many numbers come apart.
    numbers = written_numbers("tamil", 24)
    given = auto = cut = 0
    for data, text in numbers:
        for script in ("tamil", "auto"):
            answer = client.post(
                f"/api/v1/number?script={script}",
                content=data,
                headers={"Content-Type": "image/png"},
            ).json()
            right = answer["complete"] and answer["number"] == text
            given += script == "tamil" and right
            auto += script == "auto" and right
        latin_pieces = multiscript.read_number(model, read_number(data, predictor), "tamil")
        cut += latin_pieces.complete and latin_pieces.number == text
    assert given >= 20 and auto >= 19 and cut <= given - 8, (given, auto, cut)


def test_auto_reads_a_number_as_latin_when_most_of_its_digits_would_be(
    model: ScriptModel, predictor: Predictor, mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three MNIST digits the digit model accepts; the script model finds Latin likely
    # enough in two of them to keep each alone as Latin, and the third a sure
    # Arabic-Indic digit. Together the three weigh more for Arabic-Indic, but a number
    # is read as Latin when most of its digits would be, as each would be alone.
    strip = np.pad(np.hstack([mnist.test_images[i] for i in (0, 1, 2)]), 12)
    reading = read_number(to_png(strip), predictor)
    assert len(reading.digits) == 3 and all(d.verdict == "digit" for d in reading.digits)
    latin, ai = model.scripts.index("latin"), model.scripts.index("arabic_indic")
    rows = np.full((3, model.classes), 1e-6)
    for row, there in zip(rows, (model.latin_keep + 0.05,) * 2 + (1e-6,), strict=True):
        row[10 * latin + 7], row[10 * ai + 7] = there, 1 - there
    monkeypatch.setattr(model, "infer", lambda pixels: np.log(rows[: len(pixels)]))
    assert multiscript.read_number(model, reading, "auto") is reading
    # With only one of the three Latin enough, the number is read in Arabic-Indic.
    rows[1, 10 * latin + 7], rows[1, 10 * ai + 7] = 1e-6, 1.0
    assert multiscript.read_number(model, reading, "auto").script == "arabic_indic"


def test_a_piece_of_a_number_is_not_a_digit_only_when_the_model_is_surer_than_alone(
    model: ScriptModel, predictor: Predictor, mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three pieces read in Arabic-Indic; the second gives "not a digit" more than SURE
    # (alone it would be not_a_digit) but less than number_junk: between two digits it is
    # read as its digit, and the number is complete. Over number_junk it is not.
    strip = np.pad(np.hstack([mnist.test_images[i] for i in (0, 1, 2)]), 12)
    reading = read_number(to_png(strip), predictor)
    assert len(reading.digits) == 3
    assert multiscript.SURE < model.number_junk < 1
    ai = model.scripts.index("arabic_indic")
    rows = np.full((3, model.classes), 1e-6)
    for row, digit in zip(rows, (3, 5, 8), strict=True):
        row[10 * ai + digit] = 1.0
    between = (multiscript.SURE + model.number_junk) / 2
    rows[1, 10 * ai + 5], rows[1, -1] = 1 - between, between
    monkeypatch.setattr(model, "infer", lambda pixels: np.log(rows[: len(pixels)]))
    alone = multiscript.within(rows[1, 10 * ai : 10 * ai + 10], 1, between)[0]
    assert alone["verdict"] == "not_a_digit"
    read = multiscript.read_number(model, reading, "arabic_indic")
    assert (read.number, read.complete, read.script) == ("358", True, "arabic_indic")
    rows[1, 10 * ai + 5], rows[1, -1] = 0.02, 0.98
    read = multiscript.read_number(model, reading, "arabic_indic")
    assert read.digits[1].verdict == "not_a_digit" and not read.complete
