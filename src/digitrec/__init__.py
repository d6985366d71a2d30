"""Neural Digit Recognizer: a handwritten-digit CNN you can train, serve and use."""

import os

# PyTorch's OpenMP threads spin-wait by default; beside any other busy process that makes
# a 2-core machine 2-3x slower. Passive waiting costs nothing measurable. Must be set
# before torch is first imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
