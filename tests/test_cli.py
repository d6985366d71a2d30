"""The `digitrec` command: help for everything, predict, models, evaluate, and errors that
end in one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from digitrec.cli import build_parser, main
from digitrec.registry import ModelEntry
from tests.conftest import encode, mnist_png, run_cli, stroke_image

SUBCOMMANDS = [
    ["data", "fetch"],
    ["data", "info"],
    ["train"],
    ["evaluate"],
    ["predict"],
    ["serve"],
    ["models", "list"],
    ["models", "show"],
    ["export"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "revoke"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: digitrec " + " ".join(words))
    assert len(out.splitlines()) > 4


def run(
    *args: str, home: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home, env=extra_env)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("digitrec: error: ")
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.mnist
def test_predict_answers_good_files_and_reports_bad_ones(tmp_path: Path, mnist) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "seven.png"
    good.write_bytes(mnist_png(mnist, 0, scale=4))
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    done = run(
        "predict",
        str(good),
        str(broken),
        str(text),
        str(tmp_path / "missing.png"),
        "--json",
        home=tmp_path,
    )
    assert done.returncode == 1
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.get("digit") for r in rows] == [int(mnist.test_labels[0]), None, None, None]
    assert [r["error"]["code"] for r in rows[1:]] == [
        "invalid_image",
        "unsupported_media_type",
        "file_not_found",
    ]
    plain = run("predict", str(good), str(broken), home=tmp_path)
    assert plain.returncode == 1
    assert plain.stdout.startswith(f"{good}: {mnist.test_labels[0]}   top: ")
    assert plain.stderr.strip().startswith(f"{broken}: error:")


def test_predict_blank_image_is_not_a_guess(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(encode(Image.new("L", (200, 200), 255)))
    done = run("predict", str(blank), home=tmp_path)
    assert done.returncode == 1 and "blank" in done.stderr


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    img.write_bytes(encode(Image.fromarray(stroke_image())))
    line = one_line_error(run("predict", str(img), "--model", "digitnet:nope", home=tmp_path))
    assert "no model 'digitnet:nope'" in line


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_corrupt_model_is_one_line(tmp_path: Path, bundled_entry: ModelEntry, damage: str) -> None:
    models = tmp_path / "models"
    copy = models / bundled_entry.name / bundled_entry.version
    shutil.copytree(bundled_entry.path, copy)
    for name in ("model.onnx", "model.safetensors"):
        path = copy / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if damage == "truncate" else data[::-1])
    img = tmp_path / "x.png"
    img.write_bytes(encode(Image.fromarray(stroke_image())))
    for backend in ("onnx", "torch"):
        line = one_line_error(
            run(
                "predict",
                str(img),
                "--backend",
                backend,
                "--models-dir",
                str(models),
                "--model",
                bundled_entry.ref,
                home=tmp_path,
            )
        )
        assert "does not match its manifest" in line
    line = one_line_error(
        run(
            "serve",
            "--port",
            "0",
            "--models-dir",
            str(models),
            "--model",
            bundled_entry.ref,
            home=tmp_path,
        )
    )
    assert "does not match its manifest" in line


def test_invalid_setting_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run("train", "--epochs", "0", home=tmp_path))
    assert "epochs" in line
    line = one_line_error(run("models", "list", home=tmp_path, extra_env={"DIGITREC_TOP_K": "99"}))
    assert "top_k" in line


def test_models_list_and_show(
    tmp_path: Path, bundled_entry: ModelEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--home", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    shipped = next(m for m in listed if m["version"] == bundled_entry.version)
    assert shipped["bundled"] and shipped["alias"] == "production"
    assert shipped["test_accuracy"] == bundled_entry.metrics["test_accuracy"]
    assert main(["models", "show", bundled_entry.ref, "--home", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == bundled_entry.manifest["files"]


@pytest.mark.mnist
def test_evaluate_agrees_with_the_manifest(tmp_path: Path, bundled_entry: ModelEntry) -> None:
    done = run("evaluate", bundled_entry.ref, "--json", "--limit", "20", home=tmp_path)
    assert done.returncode == 0, done.stderr
    everything = json.loads(done.stdout)
    report = everything["test"]
    assert report["n"] == 10000
    assert report["flagged"] < 0.01 and report["ece_after"] < 0.005
    variants = everything["realistic"]["variants"]
    assert {"photo", "transparent", "small_thick"} <= set(variants)
    assert all(
        {"accuracy", "flagged", "ece_before", "ece_after"} <= set(v) for v in variants.values()
    )
    rejection = everything["rejection"]
    assert set(rejection["negatives"]) == {
        "fashion_mnist",
        "fashion_mnist_uploaded",
        "unseen_fonts",
        "unseen_scribbles",
        "several_digits",
    }
    for row in [*rejection["negatives"].values(), *rejection["positives"].values()]:
        assert {"flagged", "auroc", "fpr_at_95_tpr"} <= set(row)
    assert rejection["negatives"]["unseen_fonts"]["flagged"] > 0.9
    assert report["name"] == bundled_entry.name and report["version"] == bundled_entry.version
    assert report["agrees_with_manifest"] is True
    assert abs(report["test_accuracy"] - bundled_entry.metrics["test_accuracy"]) <= 1e-4


def test_keys_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(tmp_path)]
    assert main(["keys", "create", "--name", "ci", *home]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("dr_")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("digitrec.db*"))  # the database
    assert secret.encode() not in stored  # only the hash is stored
    assert main(["keys", "list", "--json", *home]) == 0
    (key,) = json.loads(capsys.readouterr().out)
    assert main(["keys", "revoke", key["id"], *home]) == 0
    assert main(["keys", "revoke", "key_nope", *home]) == 1
    assert "no API key" in capsys.readouterr().err


def test_data_info_without_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "--data-dir", str(tmp_path / "none"), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["ready"] is False and not any(f["present"] for f in info["files"])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_taken_port_is_one_line_before_anything_loads(tmp_path: Path, workers: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run("serve", "--port", port, "--workers", workers, home=tmp_path)
    assert done.returncode == 7
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in one_line_error(done)
    assert "loaded model" not in done.stdout + done.stderr


def test_options_are_never_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate --model X` once set --models-dir X silently (evaluate takes the model as
    an argument); a partial option name is an error now."""
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--model", "x"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --model" in capsys.readouterr().err
