"""Imported datasets: each format round trip, the store's checks, every refusal in one
line with nothing left behind, and a short training run on an imported dataset.

The datasets are made here: a few dozen 28x28 images a digit, in MNIST layout (white
strokes on black), each digit a bar at its own angle so that a tiny run can learn them.
"""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitrec import datasets
from digitrec.cli import main
from digitrec.config import Settings
from digitrec.data import encode_idx
from digitrec.datasets import (
    FILES,
    MANIFEST,
    SPLITS,
    ImportOptions,
    import_dataset,
    load_dataset,
    save_dataset,
    verify,
)
from digitrec.errors import DataUnavailable
from digitrec.preprocess import decode, prepare, to_png
from digitrec.registry import Registry
from digitrec.scripts import SCRIPTS, check_script, digit_char
from digitrec.storage import atomic_write_json
from digitrec.training.runs import SETTINGS_FILE, load_run_settings
from tests.conftest import run_cli

PER_DIGIT = {"train": 30, "test": 8}


def digits(n_per_digit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bars through the centre, 18 degrees apart per digit, jittered: MNIST layout."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for digit in range(10):
        for _ in range(n_per_digit):
            img = np.zeros((28, 28), np.uint8)
            angle = np.deg2rad(digit * 18 + rng.uniform(-4, 4))
            dx, dy = 9 * np.cos(angle), 9 * np.sin(angle)
            c = 14 + rng.uniform(-1, 1, 2)
            ends = [(int(c[0] - dx), int(c[1] - dy)), (int(c[0] + dx), int(c[1] + dy))]
            cv2.line(img, ends[0], ends[1], int(rng.integers(200, 256)), 2, cv2.LINE_AA)
            images.append(img)
            labels.append(digit)
    return np.stack(images), np.asarray(labels, np.uint8)


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: digits(n, seed) for seed, (split, n) in enumerate(PER_DIGIT.items())}


def write_idx(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """MNIST's names; the train files gzipped, the test ones plain."""
    folder.mkdir(parents=True, exist_ok=True)
    for (split, what), name in FILES.items():
        data = encode_idx(splits[split][0 if what == "images" else 1])
        if split == "train":
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def csv_text(images: np.ndarray, labels: np.ndarray, label_column: str = "label") -> str:
    side = images.shape[1]
    header = [label_column] + [f"pixel{i}" for i in range(side * side)]
    rows = [",".join(header)]
    rows += [
        ",".join([str(int(y)), *map(str, x.reshape(-1).tolist())])
        for x, y in zip(images, labels, strict=True)
    ]
    return "\n".join(rows) + "\n"


def write_csv(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        (folder / f"{split}.csv").write_text(csv_text(images, labels))
    return folder


def write_imagefolder(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Dark ink on white paper, 56x56: what a scan looks like, not MNIST's layout."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = folder / split / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            big = cv2.resize(255 - image, (56, 56), interpolation=cv2.INTER_LINEAR)
            path.write_bytes(to_png(big))
    return folder


def few_per_digit(n: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: digits(n, seed) for seed, split in enumerate(SPLITS)}


def home_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def assert_stored(settings: Settings, name: str, expected: dict[str, tuple[np.ndarray, ...]]):
    data = load_dataset(settings, name)
    np.testing.assert_array_equal(data.train_images, expected["train"][0])
    np.testing.assert_array_equal(data.train_labels, expected["train"][1])
    np.testing.assert_array_equal(data.test_images, expected["test"][0])
    np.testing.assert_array_equal(data.test_labels, expected["test"][1])
    manifest = verify(settings, name)
    for split, n in PER_DIGIT.items():
        assert manifest["splits"][split]["count"] == 10 * n
        assert manifest["splits"][split]["per_label"] == [n] * 10
    return manifest


# --- round trips --------------------------------------------------------------------------


def test_idx_round_trip_keeps_mnist_layout_arrays_byte_for_byte(tmp_path: Path, splits) -> None:
    settings = home_settings(tmp_path)
    source = write_idx(tmp_path / "madbase", splits)
    import_dataset(settings, "idx", source, "madbase", "arabic_indic")
    manifest = assert_stored(settings, "madbase", splits)
    assert manifest["script"] == "arabic_indic" and manifest["digit_zero"] == "U+0660"
    assert manifest["source"]["format"] == "idx" and manifest["source"]["path"] == str(source)
    assert manifest["layout"] == {"kept": 380, "prepared": 0, "skipped_blank": 0}
    assert {"created_at", "digitrec"} <= set(manifest)
    data = load_dataset(settings, "madbase")
    assert (data.name, data.script) == ("madbase", "arabic_indic")
    assert data.provenance["sha256"] == {f: v["sha256"] for f, v in manifest["files"].items()}


def test_idx_files_named_one_by_one(tmp_path: Path, splits) -> None:
    settings = home_settings(tmp_path)
    folder = write_idx(tmp_path / "src", splits)
    for old, new in (("t10k-images-idx3-ubyte", "a"), ("t10k-labels-idx1-ubyte", "b")):
        (folder / old).rename(tmp_path / new)
    options = ImportOptions(
        idx_files={
            "t10k-images-idx3-ubyte": tmp_path / "a",
            "t10k-labels-idx1-ubyte": tmp_path / "b",
        }
    )
    import_dataset(settings, "idx", folder, "named", "persian", options)
    assert_stored(settings, "named", splits)


def test_csv_folder_round_trip(tmp_path: Path, splits) -> None:
    settings = home_settings(tmp_path)
    import_dataset(settings, "csv", write_csv(tmp_path / "kannada", splits), "kn", "kannada")
    assert_stored(settings, "kn", splits)


def test_csv_read_in_small_chunks_gives_the_same_arrays_and_line_numbers(
    tmp_path: Path, splits, monkeypatch
) -> None:
    monkeypatch.setattr(datasets, "CSV_CHUNK_ROWS", 7)
    file = tmp_path / "train.csv"
    file.write_text(csv_text(*splits["train"]))
    images, labels = datasets.read_csv_file(file, "label")
    np.testing.assert_array_equal(images, splits["train"][0])
    np.testing.assert_array_equal(labels, splits["train"][1])
    lines = file.read_text().splitlines()
    lines[40] = lines[40].replace(",", ",x,", 1).rsplit(",", 1)[0]  # same count, not a number
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(datasets.InvalidDataset, match="line 41: a value is not a whole number"):
        datasets.read_csv_file(file, "label")


def test_one_csv_with_a_test_share_splits_each_digit_the_same_way(tmp_path: Path) -> None:
    settings = home_settings(tmp_path)
    images, labels = digits(20, seed=7)
    file = tmp_path / "all.csv"
    file.write_text(csv_text(images, labels, "digit"))
    options = ImportOptions(label_column="digit", test_share=0.25)
    first = import_dataset(settings, "csv", file, "one", "thai", options)
    assert first["splits"]["test"]["per_label"] == [5] * 10
    again = import_dataset(settings, "csv", file, "one", "thai", options, force=True)
    assert again["files"] == first["files"]  # the same split, the same bytes


def test_other_sizes_and_dark_ink_go_through_the_serving_layout(tmp_path: Path) -> None:
    settings = home_settings(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    for split, seed in (("train", 1), ("test", 2)):
        images, labels = digits(3, seed)
        small = np.stack([255 - cv2.resize(x, (16, 16)) for x in images])  # dark on light
        small[0] = 255  # a blank page (in each split): left out, counted
        (folder / f"{split}.csv").write_text(csv_text(small, labels))
    manifest = import_dataset(settings, "csv", folder, "scans", "devanagari")
    assert manifest["layout"] == {"kept": 0, "prepared": 58, "skipped_blank": 2}
    data = load_dataset(settings, "scans")
    assert data.train_images.shape == (29, 28, 28)
    border = np.concatenate([data.train_images[:, 0], data.train_images[:, -1]], axis=1)
    assert border.max() < 30 and data.train_images.max() == 255  # white ink on black


def test_imagefolder_round_trip_prepares_files_as_uploads(tmp_path: Path, splits) -> None:
    settings = home_settings(tmp_path)
    small = few_per_digit(3)
    source = write_imagefolder(tmp_path / "folder", small)
    manifest = import_dataset(settings, "imagefolder", source, "pics", "bengali")
    data = load_dataset(settings, "pics")
    first = sorted((source / "train" / "0").iterdir())[0]
    np.testing.assert_array_equal(data.train_images[0], prepare(decode(first.read_bytes())).image)
    assert manifest["splits"]["train"]["per_label"] == [3] * 10
    assert manifest["layout"]["prepared"] == 60
    np.testing.assert_array_equal(data.test_labels, small["test"][1])


def test_save_dataset_takes_arrays_from_any_producer(tmp_path: Path, splits) -> None:
    """How a generated dataset (fonts, a later part) enters the store."""
    settings = home_settings(tmp_path)
    source = {"format": "generated", "path": None, "files": []}
    save_dataset(settings, "gen", "khmer", splits, source)
    assert_stored(settings, "gen", splits)


# --- the store's checks -----------------------------------------------------------------------


def test_a_changed_file_is_detected_on_load(tmp_path: Path, splits, capsys) -> None:
    settings = home_settings(tmp_path)
    import_dataset(settings, "idx", write_idx(tmp_path / "src", splits), "t", "latin")
    stored = settings.datasets_path / "t" / "train-images-idx3-ubyte"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(DataUnavailable, match="does not match its manifest"):
        load_dataset(settings, "t")
    assert main(["data", "show", "t", "--home", str(settings.home)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SHA-256" in err


def test_list_show_remove(tmp_path: Path, splits, capsys) -> None:
    settings = home_settings(tmp_path)
    import_dataset(settings, "csv", write_csv(tmp_path / "src", splits), "kn", "kannada")
    home = ["--home", str(settings.home)]
    assert main(["data", "list", "--json", *home]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mnist", "kn"]
    assert rows[1]["train"] == 300 and rows[1]["script"] == "kannada" and rows[1]["ready"]
    assert main(["data", "show", "kn", "--json", *home]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert main(["data", "show", "kn", *home]) == 0
    assert "per digit" in capsys.readouterr().out
    assert main(["data", "remove", "kn", *home]) == 0
    assert list(settings.datasets_path.iterdir()) == []
    assert main(["data", "show", "kn", *home]) == 4


# --- refusals: one line, non-zero, nothing written ------------------------------------------


def _bad_idx_magic(src: Path, splits) -> list[str]:
    folder = write_idx(src, splits)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + b"\0" * 12)
    return ["--format", "idx", str(folder)]


def _missing_idx(src: Path, splits) -> list[str]:
    folder = write_idx(src, splits)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    return ["--format", "idx", str(folder)]


def _idx_label_ten(src: Path, splits) -> list[str]:
    labels = splits["test"][1].copy()
    labels[3] = 10
    folder = write_idx(src, {**splits, "test": (splits["test"][0], labels)})
    return ["--format", "idx", str(folder)]


def _csv_ragged(src: Path, splits) -> list[str]:
    folder = write_csv(src, splits)
    lines = (folder / "test.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0]
    (folder / "test.csv").write_text("\n".join(lines) + "\n")
    return ["--format", "csv", str(folder)]


def _csv_not_square(src: Path, splits) -> list[str]:
    images, labels = splits["train"]
    src.mkdir()
    flat = images.reshape(len(images), -1)[:, :783]
    header = ",".join(["label"] + [f"p{i}" for i in range(783)])
    rows = [",".join(map(str, [y, *x])) for x, y in zip(flat, labels, strict=True)]
    (src / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return ["--format", "csv", str(src / "train.csv"), "--test-share", "0.2"]


def _csv_label_out_of_range(src: Path, splits) -> list[str]:
    images, labels = splits["train"]
    labels = labels.copy()
    labels[0] = 12
    src.mkdir()
    (src / "all.csv").write_text(csv_text(images, labels))
    return ["--format", "csv", str(src / "all.csv"), "--test-share", "0.2"]


def _csv_not_a_number(src: Path, splits) -> list[str]:
    folder = write_csv(src, splits)
    text = (folder / "train.csv").read_text().replace("\n0,", "\nx,", 1)
    (folder / "train.csv").write_text(text)
    return ["--format", "csv", str(folder)]


def _csv_no_label_column(src: Path, splits) -> list[str]:
    folder = write_csv(src, splits)
    return ["--format", "csv", str(folder), "--label-column", "digit"]


def _csv_empty_class(src: Path, splits) -> list[str]:
    images, labels = splits["test"]
    keep = labels != 3
    folder = write_csv(src, {**splits, "test": (images[keep], labels[keep])})
    return ["--format", "csv", str(folder)]


def _folder_empty_class(src: Path, splits) -> list[str]:
    folder = write_imagefolder(src, few_per_digit())
    for png in (folder / "test" / "7").iterdir():
        png.unlink()
    return ["--format", "imagefolder", str(folder)]


def _folder_not_an_image(src: Path, splits) -> list[str]:
    folder = write_imagefolder(src, few_per_digit())
    (folder / "train" / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return ["--format", "imagefolder", str(folder)]


def _no_test_split(src: Path, splits) -> list[str]:
    src.mkdir()
    (src / "train.csv").write_text(csv_text(*splits["train"]))
    return ["--format", "csv", str(src)]


def _missing_path(src: Path, splits) -> list[str]:
    return ["--format", "idx", str(src / "nowhere")]


BAD = {
    "wrong IDX magic": (_bad_idx_magic, "bad magic number"),
    "missing IDX file": (_missing_idx, "no test labels file"),
    "IDX label 10": (_idx_label_ten, "labels outside 0-9 (10)"),
    "ragged CSV row": (_csv_ragged, "line 6 has 784 values; the header has 785"),
    "non-square pixels": (_csv_not_square, "783 pixel columns, not a square number"),
    "CSV label 12": (_csv_label_out_of_range, "labels outside 0-9 (12)"),
    "CSV text value": (_csv_not_a_number, "line 2: a value is not a whole number"),
    "no label column": (_csv_no_label_column, "no column 'digit'"),
    "empty class (csv)": (_csv_empty_class, "the test split has no images of 3"),
    "empty class (folder)": (_folder_empty_class, "no images of 7"),
    "undecodable image": (_folder_not_an_image, "broken.png"),
    "no test split": (_no_test_split, "give --test-share"),
    "missing path": (_missing_path, "no such file or folder"),
}


def import_args(tmp_path: Path, source: list[str], name: str = "bad", script: str = "latin"):
    return ["data", "import", *source, "--name", name, "--script", script,
            "--home", str(tmp_path / "home")]  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, splits, capsys, case) -> None:
    make, message = BAD[case]
    code = main(import_args(tmp_path, make(tmp_path / "src", splits)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("digitrec: error: ") and err.count("\n") == 1, err
    assert message in err
    store = tmp_path / "home" / "datasets"
    assert not store.exists() or list(store.iterdir()) == []


def test_unknown_script_existing_name_and_reserved_name(tmp_path: Path, splits, capsys) -> None:
    source = ["--format", "idx", str(write_idx(tmp_path / "src", splits))]
    assert main(import_args(tmp_path, source, script="klingon")) == 2
    assert "unknown script 'klingon'" in capsys.readouterr().err
    assert main(import_args(tmp_path, source, name="mnist")) == 2
    assert "MNIST itself" in capsys.readouterr().err
    assert main(import_args(tmp_path, source, name="../up")) == 2
    assert "bad dataset name" in capsys.readouterr().err
    assert main(import_args(tmp_path, source, name="twice")) == 0
    manifest = tmp_path / "home" / "datasets" / "twice" / MANIFEST
    before = manifest.read_text()
    capsys.readouterr()
    assert main(import_args(tmp_path, source, name="twice")) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and manifest.read_text() == before
    assert main([*import_args(tmp_path, source, name="twice"), "--force"]) == 0
    assert json.loads(manifest.read_text())["created_at"]  # replaced, whole
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == ["twice"]


def test_scripts_table_names_each_scripts_digits() -> None:
    for script, zero in SCRIPTS.items():
        for d in range(10):
            assert unicodedata.digit(chr(zero + d)) == d, script
        assert unicodedata.name(chr(zero)).endswith("DIGIT ZERO")
    assert digit_char("kannada", 3) == "\u0ce9"
    for name in ("latin", "arabic_indic", "persian", "devanagari", "bengali", "thai", "kannada"):
        assert check_script(name) == name


# --- training on an imported dataset --------------------------------------------------------


def test_model_name_and_resume_keep_the_dataset(tmp_path: Path) -> None:
    assert Settings().model_name == "digitnet"
    assert Settings(dataset="kn").model_name == "digitnet-kn"
    assert Settings(dataset="kn", name="mine").model_name == "mine"
    run = tmp_path / "runs" / "r1"
    atomic_write_json(run / SETTINGS_FILE, Settings(dataset="kn", epochs=2).training_dict())
    resumed = load_run_settings(run, Settings(home=tmp_path, dataset="other"))
    assert (resumed.dataset, resumed.epochs) == ("kn", 2)


def test_train_on_an_imported_dataset(tmp_path: Path, splits) -> None:
    home = tmp_path / "home"
    source = write_csv(tmp_path / "kannada", splits)
    done = run_cli("data", "import", "--format", "csv", str(source), "--name", "kn",
                   "--script", "kannada", home=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dataset kn (kannada): 300 train and 80 test images" in done.stdout
    done = run_cli(
        "train", "--dataset", "kn", "--epochs", "1", "--train-subset", "200", "--val-size",
        "100", "--batch-size", "32", "--threads", "1", "--no-progress", home=home,
        env={"DIGITREC_NEGATIVES_POOL": "200", "DIGITREC_CALIBRATION_VARIANTS": "5"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (entry,) = Registry(home / "models", extra_roots=()).list()
    assert entry.name == "digitnet-kn"
    data = entry.manifest["data"]
    stored = verify(Settings(home=home), "kn")
    assert (data["dataset"], data["script"]) == ("kn", "kannada")
    assert data["sha256"] == {f: v["sha256"] for f, v in stored["files"].items()}
    assert (data["train_size"], data["val_size"], data["test_size"]) == (200, 100, 80)
    assert entry.manifest["settings"]["dataset"] == "kn"
    assert "Dataset `kn` (kannada digits)" in (entry.path / "MODEL_CARD.md").read_text()
    entry.verify()
