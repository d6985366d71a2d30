"""Digits of other scripts drawn from fonts: every script with its fonts installed gives
ten classes in MNIST's layout, held-out font families never reach the train split, the
same seed gives the same arrays, and a script without fonts is a one-line error.

A script whose fonts are not installed is skipped with the packages to install, except in
CI (.ci/run installs them), where it fails. Counts are tiny: a few images per digit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitrec import script_digits as sd
from digitrec.cli import main
from digitrec.config import Settings
from digitrec.datasets import in_mnist_layout, load_dataset, read_manifest
from digitrec.script_digits import FontGroup, FontSplit
from tests.conftest import in_ci

PER_DIGIT = 3
SEED = 5


def fonts_or_skip(script: str) -> FontSplit:
    """The script's font split; a skip naming the packages when they are missing (a
    failure in CI, which installs them)."""
    if len(sd.script_fonts(script)) < sd.MIN_FAMILIES:
        packages = " ".join(sd.SCRIPT_PACKAGES[script])
        reason = f"{script} fonts not installed: apt-get install {packages}"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return sd.require_fonts(script)


def families(groups: tuple[FontGroup, ...]) -> set[str]:
    return {g.family for g in groups}


def files(groups: tuple[FontGroup, ...]) -> set[Path]:
    return {f for g in groups for f in g.files}


@pytest.mark.parametrize("script", list(sd.SCRIPT_PACKAGES))
def test_each_script_gives_ten_digits_in_mnist_layout(settings: Settings, script: str) -> None:
    fonts = fonts_or_skip(script)
    assert fonts.train and fonts.held_out
    manifest = sd.generate(settings, script, per_digit=PER_DIGIT, seed=SEED)
    data = load_dataset(settings, sd.dataset_name(script))
    assert data.script == script
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ):
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert set(labels.tolist()) == set(range(10))
        assert in_mnist_layout(images).all()  # white ink on a black border
        # Ink centred by mass, as MNIST's: within 2 pixels of the middle.
        ink = images.astype(np.float64)
        mass = ink.sum(axis=(1, 2))
        assert (mass > 0).all()
        grid = np.arange(28)
        cy = (ink.sum(2) * grid).sum(1) / mass
        cx = (ink.sum(1) * grid).sum(1) / mass
        assert np.abs(cy - 14).max() <= 2 and np.abs(cx - 14).max() <= 2
    # The manifest says which families made which split; they never overlap.
    recorded = manifest["source"]["fonts"]
    trained = {g["family"] for g in recorded["train"]}
    held = {g["family"] for g in recorded["held_out"]}
    assert trained and held and not trained & held
    trained_files = {f for g in recorded["train"] for f in g["files"]}
    assert not trained_files & {f for g in recorded["held_out"] for f in g["files"]}
    assert read_manifest(settings, sd.dataset_name(script))["source"]["fonts"] == recorded


def installed_script() -> str:
    """A script whose fonts are installed here (Thai first: many families)."""
    for script in ("thai", *sd.SCRIPT_PACKAGES):
        if len(sd.script_fonts(script)) >= 3:
            return script
    pytest.fail("no script's fonts installed") if in_ci() else pytest.skip("no script fonts")
    raise AssertionError  # (unreachable)


def test_held_out_fonts_never_reach_the_train_split() -> None:
    script = installed_script()
    fonts = sd.require_fonts(script)
    assert not families(fonts.train) & families(fonts.held_out)
    assert not files(fonts.train) & files(fonts.held_out)
    # Drawn with a held-out family excluded, the train split is the same array: it never
    # drew from held-out fonts. Drawn with a training family excluded, it differs.
    base = sd.make_splits(script, fonts, PER_DIGIT, SEED)
    fewer_held = FontSplit(fonts.train, fonts.held_out[:1])
    assert np.array_equal(
        sd.make_splits(script, fewer_held, PER_DIGIT, SEED)["train"][0], base["train"][0]
    )
    fewer_train = FontSplit(fonts.train[1:], fonts.held_out)
    assert not np.array_equal(
        sd.make_splits(script, fewer_train, PER_DIGIT, SEED)["train"][0], base["train"][0]
    )


def test_the_split_is_by_family_and_stable() -> None:
    groups = [FontGroup(f"family {i}", (Path(f"/fonts/f{i}.ttf"),)) for i in range(9)]
    split = sd.split_fonts(groups)
    assert len(split.held_out) == 2 and len(split.train) == 7  # a quarter, rounded
    assert sd.split_fonts(list(reversed(groups))) == split  # the order found does not matter
    assert len(sd.split_fonts(groups[:2]).held_out) == 1
    # Weights, slants and versions of one design are one family.
    for name in ("Garuda", "Garuda Bold", "garuda-BoldOblique"):
        assert sd.family_key(name) == "garuda"
    assert sd.family_key("padmaa-Bold.1.1") == sd.family_key("padmaa") == "padmaa"
    assert sd.family_key("Khmer OS Battambang") != sd.family_key("Khmer OS")


def holes(image: np.ndarray) -> int:
    """Regions of background the ink encloses (the background not reached from the
    border): 1 for a ring, 0 for a dot."""
    import cv2

    count, _ = cv2.connectedComponents((image < 64).astype(np.uint8), connectivity=4)
    return count - 2 if count > 1 else 0


def test_some_arabic_zeros_are_written_as_small_circles() -> None:
    # ٠ is written as a dot or a small circle; the fonts here draw mostly dots. With
    # HOLLOW_ZEROS off, no zero of these training fonts has a hole.
    fonts = fonts_or_skip("arabic_indic")
    path = fonts.train[0].files[0]
    rng = np.random.default_rng(SEED)
    zeros = [sd.layout(sd.digit_ink(path, "٠", rng), sd.SPEC) for _ in range(40)]
    ringed = sum(holes(z) >= 1 for z in zeros)
    assert 5 <= ringed <= 25, ringed  # a share (35 %), not all: dots stay the most


def test_same_seed_same_arrays() -> None:
    script = installed_script()
    fonts = sd.require_fonts(script)
    a = sd.make_splits(script, fonts, PER_DIGIT, SEED)
    b = sd.make_splits(script, fonts, PER_DIGIT, SEED)
    c = sd.make_splits(script, fonts, PER_DIGIT, SEED + 1)
    for split in ("train", "test"):
        assert np.array_equal(a[split][0], b[split][0])
        assert np.array_equal(a[split][1], b[split][1])
        assert not np.array_equal(a[split][0], c[split][0])


def test_different_scripts_draw_different_digits() -> None:
    """Each digit's mean image differs between two scripts far more than between two
    seeds of one script."""
    scripts = [s for s in ("thai", "devanagari", "bengali") if len(sd.script_fonts(s)) >= 2]
    if len(scripts) < 2:
        pytest.fail("fonts missing") if in_ci() else pytest.skip("two scripts' fonts needed")
    n = 12

    def means(script: str, seed: int) -> np.ndarray:
        images, labels = sd.make_splits(script, sd.require_fonts(script), n, seed)["train"]
        return np.stack([images[labels == d].mean(0) for d in range(10)])

    a, a2, b = means(scripts[0], 1), means(scripts[0], 2), means(scripts[1], 1)
    between = np.abs(a - b).mean(axis=(1, 2))
    within = np.abs(a - a2).mean(axis=(1, 2))
    assert between.mean() > 1.5 * within.mean()


def test_cli_generates_and_shows_the_fonts(settings: Settings, capsys) -> None:
    script = installed_script()
    home = ["--home", str(settings.home)]
    args = ["data", "generate", "--script", script, "--per-digit", "2", *home]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"dataset fonts-{script} ({script}): 20 train" in out
    assert main(args) == 2  # exists: --force replaces it
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["data", "show", f"fonts-{script}", *home]) == 0
    shown = capsys.readouterr().out
    fonts = sd.require_fonts(script)
    assert f"fonts held out: {', '.join(sorted(families(fonts.held_out)))}" in shown
    assert "fonts trained on: " in shown


def test_a_script_without_fonts_is_one_line(
    settings: Settings, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sd, "font_files", lambda groups: [])
    home = ["--home", str(settings.home)]
    assert main(["data", "generate", "--script", "thai", *home]) == 4
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "0 font families with thai digits" in err
    assert "apt-get install fonts-thai-tlwg-ttf" in err
    assert main(["data", "generate", "--script", "all", *home]) == 4
    assert "no script has fonts installed" in capsys.readouterr().err
    assert main(["data", "generate", "--script", "latin", *home]) == 2
    assert "no fonts are generated for 'latin'" in capsys.readouterr().err
    assert not (settings.datasets_path / "fonts-thai").exists()


ROOT = Path(__file__).resolve().parent.parent


def test_ci_and_readme_name_every_script_font_package() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    listed = set(ci[ci.index("PACKAGES=(") : ci.index("\n)\n")].split())
    needed = {p for packages in sd.SCRIPT_PACKAGES.values() for p in packages}
    assert needed <= listed, sorted(needed - listed)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not [p for p in needed if p not in readme]


def test_readme_font_lists_are_the_generators() -> None:
    """The README's font lists are `digitrec data generate --script all --list-fonts`'s
    output on a machine with .ci/run's packages: checked in CI, skipped where the fonts
    installed differ."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [sd.describe_fonts(s) for s in sd.installed_scripts()]
    missing = [line for line in lines if f"\n{line}\n" not in readme]
    if (missing or len(lines) < len(sd.SCRIPT_PACKAGES)) and not in_ci():
        pytest.skip("the fonts installed here differ from .ci/run's; the README lists those")
    assert len(lines) == len(sd.SCRIPT_PACKAGES)
    assert not missing, f"regenerate the README's list: {missing}"
