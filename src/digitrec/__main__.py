"""``python -m digitrec``: the `digitrec` command (what ``torchrun -m digitrec train`` runs)."""

import sys

from digitrec.cli import main

sys.exit(main())
