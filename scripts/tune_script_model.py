"""Choose the thresholds of ``script=auto`` (#14) on validation data, never on test.

``auto`` keeps the digit model's answer when it accepts a digit and Latin holds at least
``latin_keep`` of the script model's probability, and accepts a mark the digit model
rejects as another script's digit only when the other scripts hold at least
``foreign_sure`` (``multiscript.ScriptModel.read``). The validation data: the script
model's own validation share (``train_script_model.splits``, prepared as served), and
non-digits drawn with the validation seed from the fonts and scribbles the digit model
chose its thresholds on (``negatives``). Of the pairs that cost Latin nothing, the one
that reads the other scripts' values best (then: accepts the most of them as digits,
then: flags the most non-digits) is written into the model's manifest (``auto``), with
the whole grid and the share of non-digits the digit model flags alone, so what
``auto`` costs there is on record. Beside them, ``number_junk``: how sure "not a digit"
must be for a piece of a number read in another script (``multiscript.read_number``),
the highest that still flags ``NUMBER_KEEP_FLAGGED`` of the validation non-digits that
"not a digit" flags alone.

    python scripts/tune_script_model.py src/digitrec/script_model/VERSION --home DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from train_script_model import as_served, splits

from digitrec import negatives
from digitrec.config import Settings
from digitrec.multiscript import LATIN, REJECTED, SURE, ScriptModel
from digitrec.predict import Prediction, Predictor
from digitrec.preprocess import from_image
from digitrec.rejection import softmax

LATIN_KEEP = (0.1, 0.2, 0.3, 0.5, 0.7)
FOREIGN_SURE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
NUMBER_JUNK = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# number_junk: the highest value that still flags this share of the validation
# non-digits that "not a digit" flags alone (at multiscript.SURE)
NUMBER_KEEP_FLAGGED = 0.99
NEGATIVES = 1000  # validation non-digits of each kind


def answers(predictor: Predictor, images: np.ndarray) -> list[Prediction]:
    out = []
    for image in images:
        pre = from_image(image, predictor.spec)
        out.append(predictor.answer(pre, predictor.infer(pre.tensor[None])[0], 3, 0.0))
    return out


def grid(
    model: ScriptModel,
    digits: tuple[np.ndarray, np.ndarray, list[Prediction]],
    non_digits: tuple[np.ndarray, list[Prediction]],
) -> list[dict[str, Any]]:
    logits, labels, digit_answers = digits
    neg_logits, neg_answers = non_digits
    rows = []
    for keep in LATIN_KEEP:
        for sure in FOREIGN_SURE:
            thresholds = {"latin_keep": keep, "foreign_sure": sure}
            read = [
                model.read(x, a, "auto", 3, **thresholds)
                for x, a in zip(logits, digit_answers, strict=True)
            ]
            right = np.array([r.digit == y % 10 for r, y in zip(read, labels, strict=True)])
            taken = right & np.array([r.verdict not in REJECTED for r in read])
            script = labels // 10
            flagged = [
                model.read(x, a, "auto", 3, **thresholds).verdict != "digit"
                for x, a in zip(neg_logits, neg_answers, strict=True)
            ]
            per_script = {
                name: round(float(right[script == k].mean()), 4)
                for k, name in enumerate(model.scripts)
            }
            foreign = (script != model.scripts.index(LATIN)) & (script < len(model.scripts))
            rows.append(
                {
                    **thresholds,
                    "per_script": per_script,
                    "other_scripts": round(
                        float(np.mean([v for n, v in per_script.items() if n != LATIN])), 4
                    ),
                    "other_scripts_read_as_digits": round(float(taken[foreign].mean()), 4),
                    "non_digits_flagged": round(float(np.mean(flagged)), 4),
                }
            )
    return rows


def infer(model: ScriptModel, images: np.ndarray) -> np.ndarray:
    return model.infer(images[:, None].astype(np.float32) / 255.0)


def number_grid(
    model: ScriptModel, digits: tuple[np.ndarray, np.ndarray], neg_logits: np.ndarray
) -> list[dict[str, Any]]:
    """For each ``number_junk``: the share of the other scripts' validation digits a
    number would call "not a digit", and of validation non-digits it still flags."""
    logits, labels = digits
    junk, neg_junk = softmax(logits)[:, -1], softmax(neg_logits)[:, -1]
    script = labels // 10
    foreign = (script != model.scripts.index(LATIN)) & (script < len(model.scripts))
    return [
        {
            "number_junk": t,
            "other_scripts_rejected": round(float((junk[foreign] >= t).mean()), 4),
            "non_digits_flagged": round(float((neg_junk >= t).mean()), 4),
        }
        for t in NUMBER_JUNK
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the script model's folder")
    parser.add_argument("--home", type=Path, required=True, help="where the fonts-* datasets are")
    parser.add_argument("--data-dir", type=Path, help="MNIST cache folder")
    args = parser.parse_args()
    settings = Settings(home=args.home, **({"data_dir": args.data_dir} if args.data_dir else {}))
    model = ScriptModel(args.folder)
    predictor = Predictor.from_settings(Settings())
    spec = predictor.spec
    data = model.manifest["data"]
    seed = model.manifest["training"]["seed"]
    per_latin = data.get("per_latin", data["per_script"])  # models before it: as the others
    share = data.get("latin_realistic_share", 0.0)  # models before it: none
    parts = splits(settings, model.scripts, data["per_script"], seed, per_latin, share)
    val_x, val_y = parts["val"]
    val_x = as_served(val_x, spec)
    fonts = negatives.require_fonts(negatives.TRAIN_FONTS, "training")
    neg_seed = negatives.SEEDS["validation"]
    neg = np.concatenate(
        [
            negatives.glyphs(NEGATIVES, fonts, neg_seed, spec),
            negatives.scribbles(NEGATIVES, neg_seed, spec),
        ]
    )
    neg_answers = answers(predictor, neg)
    logits, neg_logits = infer(model, val_x), infer(model, neg)  # each once, for both grids
    rows = grid(model, (logits, val_y, answers(predictor, val_x)), (neg_logits, neg_answers))
    alone_flagged = float(np.mean([a.verdict != "digit" for a in neg_answers]))
    latin_alone = max(r["per_script"][LATIN] for r in rows)
    fair = [r for r in rows if r["per_script"][LATIN] >= latin_alone]
    best = max(
        fair,
        key=lambda r: (
            r["other_scripts"],
            r["other_scripts_read_as_digits"],
            r["non_digits_flagged"],
        ),
    )
    numbers = number_grid(model, (logits, val_y), neg_logits)
    alone = next(r["non_digits_flagged"] for r in numbers if r["number_junk"] == SURE)
    number_junk = max(
        r["number_junk"] for r in numbers if r["non_digits_flagged"] >= NUMBER_KEEP_FLAGGED * alone
    )
    manifest = dict(model.manifest)
    manifest["auto"] = {
        "latin_keep": best["latin_keep"],
        "foreign_sure": best["foreign_sure"],
        "number_junk": number_junk,
        "chosen_on": "the validation share and validation non-digits (never the test fonts)",
        "digit_model_alone_flags": round(alone_flagged, 4),
        "grid": rows,
        "number_grid": numbers,
    }
    (args.folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: v for k, v in manifest["auto"].items() if k != "grid"}, indent=1))
    print(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
