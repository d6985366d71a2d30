"""Digits of other writing systems (#14): the script model and the ``script`` choice.

The script model (``scripts/train_script_model.py``) has one output for every digit of
every script it knows (class ``10 * k + digit`` for the k-th of its ``scripts``, Latin
first) and one for "not a digit", so one forward pass compares them all on one scale. It ships in
``script_model/<version>/`` (``model.onnx`` and its ``manifest.json``) and runs beside
the digit model, on the same 28x28 input, for the requests that ask for another script
than Latin (``api.service``: in a decoding thread, while the digit model runs in its
batch, so the two forward passes take two cores at once; ``read`` then only looks at its
row).

``read`` turns its outputs into the answer for a ``script`` choice:

- ``latin`` (the default): the digit model's answer, untouched; the script model does not
  run, so Latin users pay nothing for the other scripts;
- a script name: only that script's ten classes are candidates; the digit is the value
  0-9 and ``character`` its character in that script;
- ``auto``: Latin against every other script together. Latin is read by the digit model
  (MNIST accuracy and its not-a-digit verdicts stay as they are) when it holds at least
  as much probability as all the others, or when the digit model accepts the digit and
  Latin holds ``latin_keep``. Otherwise the value is read over the other scripts
  together (each value's probability summed over them: a glyph Arabic-Indic and
  Persian share keeps its whole probability), in the script that gives it most. A mark
  the digit model rejects keeps its verdict unless the other scripts hold at least
  ``foreign_sure`` and more than "not a digit" does; its value is still read so, the
  best guess, as with a script given (the digit model's guess would be a Latin one). When
  another script is close behind (``CLOSE``) and reads a different value (Bengali ৪
  against Latin 8, Arabic-Indic ٥ against 0), the answer says the script is uncertain
  and lists the alternatives; when the values agree, it does not matter which it was.

The page's offline engine (``static/offline/engine.js``) ports ``read``, ``within`` and
``_valued`` to run in the browser, from what ``api.offline`` announces (the scripts'
characters, the thresholds, ``CLOSE``, ``SURE``, ``REJECTED``): a change here is one there,
and ``tests/test_offline.py`` compares the two answer for answer.

A number (``read_number_as``) is read in one script for all its digits. Its pieces are
cut apart as Latin digits are only when it is read as Latin: the digit model and the
sequence reader know no other digits, and their cuts would split a Tamil or Thai digit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitrec.errors import InvalidRequest, ModelInvalid
from digitrec.rejection import softmax
from digitrec.scripts import SCRIPTS, digit_char

if TYPE_CHECKING:
    from digitrec.numbers.reader import NumberReading
    from digitrec.predict import Prediction

log = logging.getLogger(__name__)

ROOT = Path(__file__).parent / "script_model"
AUTO = "auto"
LATIN = "latin"
CLOSE = 0.2  # a second script at least this likely that reads another value: uncertain
SURE = 0.5  # with a script given, a top answer under this probability is "unsure"
# The defaults of auto's two thresholds; a model's manifest holds those chosen for it on
# validation data (scripts/tune_script_model.py). auto keeps the digit model's accepted
# answer while Latin is at least this likely:
LATIN_KEEP = 0.5
# and reads a mark the digit model calls "not a digit" as another script's digit only
# when that script is at least this likely:
FOREIGN_SURE = 0.9
# In a number, a piece is called "not a digit" only when the script model gives that at
# least this (alone: SURE): between other digits a piece is likelier to be a digit than a
# mark on its own, and one piece called so leaves the whole number incomplete.
NUMBER_JUNK = 0.8


@dataclass(frozen=True)
class Alternative:
    script: str
    digit: int
    character: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ScriptModel:
    """The shipped script model on ONNX Runtime (one thread, as the digit model)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        path = folder / "model.onnx"
        if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.get("sha256"):
            raise ModelInvalid(f"script model {folder.name}: model.onnx does not match its hash")
        self.version = folder.name
        self.path = path  # the ONNX file, which the page's offline mode downloads
        self.manifest = manifest
        self.scripts: tuple[str, ...] = tuple(manifest["scripts"])
        self._latin = self.scripts.index(LATIN) if LATIN in self.scripts else -1
        self._foreign = [k for k in range(len(self.scripts)) if k != self._latin]
        self.not_a_digit = bool(manifest.get("not_a_digit"))  # a last class for non-digits
        auto = manifest.get("auto", {})  # chosen on validation by scripts/tune_script_model.py
        self.latin_keep = float(auto.get("latin_keep", LATIN_KEEP))
        self.foreign_sure = float(auto.get("foreign_sure", FOREIGN_SURE))
        self.number_junk = float(auto.get("number_junk", NUMBER_JUNK))
        self.mean = float(manifest["preprocessing"]["mean"])
        self.std = float(manifest["preprocessing"]["std"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def classes(self) -> int:
        return 10 * len(self.scripts) + (1 if self.not_a_digit else 0)

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 1, 28, 28) inputs in [0, 1], as the digit model saw them -> (N, classes)."""
        x = ((pixels - self.mean) / self.std).astype(np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0])

    def logits_for(self, image: np.ndarray) -> np.ndarray:
        """This model's row for the 28x28 uint8 ``image`` the digit model reads.
        Blocking (a forward pass): the server runs it in a decoding thread."""
        return self.infer(image[None, None].astype(np.float32) / 255.0)[0]

    def check(self, script: str) -> str:
        """``script`` if this model can read it (or ``auto``), else a 400 naming those it can."""
        if script == AUTO or script in self.scripts:
            return script
        known = ", ".join((AUTO, *self.scripts))
        if script in SCRIPTS:
            raise InvalidRequest(
                f"digits of {script!r} are not read yet; choose one of: {known}",
                code="unsupported_script",
            )
        raise InvalidRequest(
            f"unknown script {script!r}; choose one of: {known}", code="unknown_script"
        )

    def read(
        self,
        logits: np.ndarray,
        answer: Prediction,
        script: str,
        top_k: int,
        latin_keep: float | None = None,
        foreign_sure: float | None = None,
    ) -> Prediction:
        """The digit model's ``answer`` for ``script``, given this model's ``logits``
        (one row) for the same input; ``auto``'s thresholds are the manifest's unless
        given (``scripts/tune_script_model.py`` tries others)."""
        if script == LATIN:
            return answer
        every = softmax(logits[None])[0]
        junk = float(every[-1]) if self.not_a_digit else 0.0  # "not a digit"
        p = every[: 10 * len(self.scripts)].reshape(len(self.scripts), 10)
        if script != AUTO:
            return self._in(self.scripts.index(script), p, answer, top_k, junk)
        mass = p.sum(axis=1)
        latin = self._latin
        values = p[self._foreign].sum(axis=0)  # each value's probability in any other script
        abroad = float(values.sum())
        sure = self.foreign_sure if foreign_sure is None else foreign_sure
        doubtful = answer.verdict in REJECTED and (abroad < sure or junk >= abroad)
        if self._is_latin(mass, answer.verdict, latin_keep):
            chosen, best = dataclasses.replace(answer, script=LATIN), latin
        else:
            chosen, best = self._valued(p, values, latin, answer, top_k)
            if doubtful:  # still not a digit; its value is the best guess, as for a script given
                chosen = dataclasses.replace(chosen, verdict=answer.verdict)
        if chosen.verdict in REJECTED:
            return chosen  # not read as a digit: no other script's reading to offer
        others = [
            Alternative(s, d, digit_char(s, d), round(float(mass[k]), 6))
            for k in np.argsort(-mass, kind="stable")
            if k != best and mass[k] >= CLOSE
            for s, d in [(self.scripts[k], int(p[k].argmax()))]
            if d != chosen.digit
        ]
        if others:
            chosen = dataclasses.replace(
                chosen,
                script_uncertain=True,
                alternatives=tuple(others),
                verdict="unsure" if chosen.verdict == "digit" else chosen.verdict,
            )
        return chosen

    def _is_latin(self, mass: np.ndarray, verdict: str, latin_keep: float | None = None) -> bool:
        """``auto``'s test for Latin, given each script's probability (``mass``) and the
        digit model's verdict: Latin holds at least as much as every other script
        together, or the digit model accepts the digit and Latin holds ``latin_keep``."""
        if self._latin < 0:
            return False
        latin = float(mass[self._latin])
        keep = self.latin_keep if latin_keep is None else latin_keep
        return latin >= float(mass.sum()) - latin or (verdict == "digit" and latin >= keep)

    def _valued(
        self, p: np.ndarray, values: np.ndarray, latin: int, answer: Prediction, top_k: int
    ) -> tuple[Prediction, int]:
        """The answer read by value over every script but Latin (``values``: each value's
        summed probability), so that a glyph two scripts share (Arabic-Indic and Persian
        ٣ and ۳) keeps its whole probability; its script is the one that gives the
        chosen value most. Returns the answer and that script's index."""
        fields, probs = within(values, top_k)
        others = [k for k in range(len(self.scripts)) if k != latin]
        best = max(others, key=lambda k: float(p[k, fields["digit"]]))
        return self._written(best, fields, probs, answer), best

    def _in(
        self, k: int, p: np.ndarray, answer: Prediction, top_k: int, junk: float = 0.0
    ) -> Prediction:
        """The answer with only the k-th script's ten digits as candidates."""
        return self._written(k, *within(p[k], top_k, junk), answer)

    def _written(
        self, k: int, fields: dict[str, Any], probs: np.ndarray, answer: Prediction
    ) -> Prediction:
        """The digit model's answer replaced by a reading in the k-th script (``within``'s
        fields and ten probabilities)."""
        return dataclasses.replace(
            answer,
            **fields,
            probabilities=tuple(round(float(v), 6) for v in probs),
            digit_score=None,
            script=self.scripts[k],
        )


def within(
    ten: np.ndarray, top_k: int, junk: float = 0.0, junk_sure: float = SURE
) -> tuple[dict[str, Any], np.ndarray]:
    """One script's ten digit probabilities (and the "not a digit" one, ``junk``: the
    verdict when it holds ``junk_sure``) -> the answer's digit, confidence, top-k and
    verdict; and the ten, summing to 1."""
    probs = ten / ten.sum()
    order = np.argsort(-probs, kind="stable")[:top_k]
    digit, confidence = int(order[0]), round(float(probs[order[0]]), 6)
    verdict = "not_a_digit" if junk >= junk_sure else "digit" if confidence >= SURE else "unsure"
    top = [(int(d), round(float(probs[d]), 6)) for d in order]
    return {"digit": digit, "confidence": confidence, "top": top, "verdict": verdict}, probs


REJECTED = ("not_a_digit", "several_digits")  # the digit model's verdicts for non-digits
RIGHT_TO_LEFT = frozenset({"arabic_indic", "persian", "nko"})  # the scripts written so


def describe(model: ScriptModel | None) -> list[dict[str, Any]]:
    """What ``GET /api/v1/model`` says of the scripts ``script`` accepts (Latin only
    without a script model)."""
    names = model.scripts if model is not None else (LATIN,)
    tested = model.manifest.get("test", {}) if model is not None else {}
    return [
        {
            "name": name,
            "digits": "".join(digit_char(name, d) for d in range(10)),
            "right_to_left": name in RIGHT_TO_LEFT,
            "held_out_accuracy": tested.get(name, {}).get("given"),
        }
        for name in names
    ]


def shipped_folder(root: Path = ROOT) -> Path | None:
    """The newest script model shipped with the package, or None."""
    folders = sorted(p for p in root.glob("*") if (p / "manifest.json").is_file())
    return folders[-1] if folders else None


@cache
def load_shipped() -> ScriptModel | None:
    """The shipped script model, loaded once per process (None when there is none or
    ONNX Runtime is not installed)."""
    folder = shipped_folder()
    if folder is None:
        return None
    try:
        return ScriptModel(folder)
    except ImportError:
        log.info("onnxruntime is not installed: digits of other scripts are not read")
        return None


def read_number_as(
    model: ScriptModel | None, read: Callable[[bool], NumberReading], script: str
) -> NumberReading:
    """A number read in ``script``, the one way the API and the CLI read it. ``read(cut)``
    reads the image's pieces (``numbers.read_number``; ``cut``: touching digits may be
    cut, which only Latin digits allow). Latin: ``read(True)`` as it is. Another script
    given: its pieces read uncut, in that script. ``auto``: the script is chosen on the
    Latin reading (``read_number``), and when it is not Latin the image is read again
    uncut, in that script. Blocking (forward passes): run it off the event loop."""
    if model is None or script == LATIN:
        return read(True)
    if script != AUTO:
        return read_number(model, read(False), script)
    first = read_number(model, read(True), AUTO)
    if first.script == LATIN:
        return first
    return read_number(model, read(False), first.script)


def read_number(model: ScriptModel, reading: NumberReading, script: str) -> NumberReading:
    """A number read digit by digit, in one script for all of it: as given, or for
    ``auto`` the script that makes the digits likeliest together, except that it is
    Latin (the digit model's reading, as it is) whenever at least half its digits would
    be read as Latin alone (``ScriptModel._is_latin``). A piece is "not a digit" when
    the script model gives that ``number_junk`` (more than alone). Blocking (a forward
    pass): run it off the event loop."""
    if script == LATIN or not reading.digits:
        return reading
    pixels = np.stack([d.image for d in reading.digits])[:, None].astype(np.float32) / 255.0
    every = softmax(model.infer(pixels).astype(np.float64))
    junk = every[:, -1] if model.not_a_digit else np.zeros(len(every))
    p = every[:, : 10 * len(model.scripts)].reshape(-1, len(model.scripts), 10)
    if script == AUTO:
        mass = p.sum(axis=2)
        latin = [model._is_latin(m, d.verdict) for m, d in zip(mass, reading.digits, strict=True)]
        together = np.log(np.maximum(mass, 1e-12)).sum(axis=0)
        script = model.scripts[int(together.argmax())]
        if script == LATIN or 2 * sum(latin) >= len(latin):
            return reading
    k = model.scripts.index(script)
    digits = [
        dataclasses.replace(
            piece,
            **within(ten, max(1, len(piece.top)), float(j), model.number_junk)[0],
            script=script,
        )
        for piece, ten, j in zip(reading.digits, p[:, k], junk, strict=True)
    ]
    read = [d for d in digits if d.verdict != "not_a_digit"]
    return dataclasses.replace(
        reading,
        digits=tuple(digits),
        number="".join(str(d.digit) for d in read),
        complete=len(read) == len(digits),
        confidence=round(float(np.prod([d.confidence for d in digits])), 6),
        script=script,
    )


def choose(model: ScriptModel | None, script: str) -> str:
    """The script to read in: as asked, when ``model`` reads it; ``auto`` is Latin
    without a script model; anything else is a 400 that says why."""
    if model is not None:
        return model.check(script)
    if script in (AUTO, LATIN):
        return LATIN
    if script not in SCRIPTS:
        raise InvalidRequest(
            f"unknown script {script!r}; choose auto or latin", code="unknown_script"
        )
    raise InvalidRequest(
        f"digits of {script!r} are not read here: no script model is installed",
        code="unsupported_script",
    )


def read_in(answer: Prediction, script: str, top_k: int) -> Prediction:
    """The digit model's ``answer`` read in ``script`` by the shipped script model, from
    the 28x28 input the answer keeps, outside a server (the CLI, the benchmarks): the
    same ``ScriptModel.read`` as the server's. Blocking (a forward pass)."""
    model = load_shipped()
    if model is None or script == LATIN:
        return answer
    return model.read(model.logits_for(answer.image), answer, script, top_k)
