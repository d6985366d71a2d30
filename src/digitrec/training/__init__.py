"""Training: fit a registered architecture on MNIST, checkpoint, resume, evaluate, register.

One file per question, each importing only the ones listed below it:

- ``runs.py``: how does `digitrec train` start, resume and finish a run? (``run_training``)
- ``publish.py``: what does a finished run leave behind (report, manifest, model version)?
- ``loop.py``: the training loop itself (``Trainer.fit``, ``Trainer.train_epoch``), the
  validation split, epoch selection and ``evaluate``.
- ``checkpoint.py``: which files hold the training state, and in what format?
- ``augment.py``: how are training batches augmented?
- ``distributed.py``: on several processes, which rank am I, which share of each epoch is
  mine, and how does `digitrec train --nproc N` start the ranks?
- ``device.py``: which device and precision, and how is the machine described?
- ``provenance.py``: which source commit trained the model?

Serving code (``api/``, ``predict.py``, ``preprocess.py``) never imports this package.
"""

from __future__ import annotations

from digitrec.training.runs import TrainResult, run_training

__all__ = ["TrainResult", "run_training"]
