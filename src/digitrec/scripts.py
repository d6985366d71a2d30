"""The writing systems whose digits digitrec can learn, each with its digit zero.

One table, read by the dataset store (``digitrec data import --script``), the model
manifest and, later, whatever shows a digit in its own script: the digit ``d`` of a
script is ``chr(zero + d)``, since Unicode encodes every decimal digit set as ten
consecutive code points (``unicodedata.digit`` confirms it, and a test checks each row).
Needs nothing beyond the standard library, so serving code may import it too.
"""

from __future__ import annotations

from digitrec.errors import InvalidRequest

# Script name (as `--script` takes it) -> code point of its digit zero.
SCRIPTS: dict[str, int] = {
    "latin": 0x0030,  # 0-9: MNIST
    "arabic_indic": 0x0660,  # MADBase, AHDBase
    "persian": 0x06F0,  # extended Arabic-Indic (Persian, Urdu): HODA
    "nko": 0x07C0,
    "devanagari": 0x0966,  # CPAR-2012
    "bengali": 0x09E6,  # NumtaDB
    "gurmukhi": 0x0A66,
    "gujarati": 0x0AE6,
    "oriya": 0x0B66,
    "tamil": 0x0BE6,
    "telugu": 0x0C66,
    "kannada": 0x0CE6,  # Kannada-MNIST
    "malayalam": 0x0D66,
    "sinhala": 0x0DE6,  # Sinhala Lith digits
    "thai": 0x0E50,
    "lao": 0x0ED0,
    "tibetan": 0x0F20,
    "myanmar": 0x1040,
    "khmer": 0x17E0,
    "mongolian": 0x1810,
    "ol_chiki": 0x1C50,
}


def check_script(name: str) -> str:
    """``name`` if it is a known script, else a one-line error listing them."""
    if name not in SCRIPTS:
        raise InvalidRequest(f"unknown script {name!r}; known scripts: {', '.join(SCRIPTS)}")
    return name


def digit_char(script: str, digit: int) -> str:
    """The character of ``digit`` (0-9) in ``script``."""
    return chr(SCRIPTS[check_script(script)] + digit)
