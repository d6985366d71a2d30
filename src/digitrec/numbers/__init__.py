"""Whole numbers (issue #13): several digits in one image, read left to right.

``synth`` makes number images from MNIST digits with their ground truth, ``segment``
cuts an ink map into one piece per digit, ``reader`` reads the pieces with the served
single-digit model (``read_number``, what the API serves). ``ctc`` is the compared
alternative, a CNN + CTC reading the whole strip (needs PyTorch; benchmark only).
"""
