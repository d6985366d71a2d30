"""Record what the preprocessing makes of a fixed corpus, for tests/test_preprocess_equivalence.py.

The corpus: every ``STRIDE``-th MNIST test digit, ``N`` of them, redrawn in every variant
of ``realistic.py`` (``VARIANTS`` and ``LIGHT_ON_DARK``, seed ``SEED``). Each file goes
through ``preprocess_bytes`` with the bundled model's spec; the 28x28 uint8 pictures
(zeros where the file was refused as blank) are written to ``tests/golden/`` with the
corpus's parameters, so the test rebuilds the same files and compares a changed
preprocessing with the one recorded here. Run it before changing the preprocessing, from
the repository root, and commit its output:

    python scripts/preprocess_fixture.py
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np

from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.errors import BlankImage
from digitrec.preprocess import preprocess_bytes
from digitrec.realistic import LIGHT_ON_DARK, VARIANTS, realistic_set
from digitrec.registry import BUNDLED_ROOT, Registry

N = 40  # digits per variant: 15 variants x 40 = 600 files
STRIDE = 17  # every 17th test digit (not the 25th of test_realistic.py: other digits)
SEED = 17
OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "preprocess_fixture.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    mnist = load_mnist(Settings(), progress=False)
    spec = Registry(BUNDLED_ROOT, extra_roots=()).resolve().preprocessing
    images = mnist.test_images[::STRIDE][:N]
    labels = mnist.test_labels[::STRIDE][:N]
    corpus = realistic_set(images, labels, N, SEED, {**VARIANTS, **LIGHT_ON_DARK})
    out = np.zeros((len(corpus), spec.size, spec.size), np.uint8)
    for i, (_, _, raw) in enumerate(corpus):
        with contextlib.suppress(BlankImage):  # left black: refused
            out[i] = preprocess_bytes(raw, spec).image
    np.savez_compressed(
        args.output,
        images=out,
        variants=np.array([v for v, _, _ in corpus]),
        labels=np.array([label for _, label, _ in corpus]),
        n=N,
        stride=STRIDE,
        seed=SEED,
    )
    refused = int((out.reshape(len(out), -1).max(1) == 0).sum())
    print(f"wrote {args.output}: {len(corpus)} files, {refused} refused as blank")


if __name__ == "__main__":
    main()
