"""Whole numbers (issue #13): several digits in one image, read left to right.

``synth`` makes number images from MNIST digits with their ground truth, ``segment``
cuts an ink map into one piece per digit, ``reader`` reads the pieces with the served
single-digit model (``read_number``, what the API serves), asking ``sequence`` (the
shipped CNN + CTC sequence reader, ONNX Runtime) how many digits a piece of touching
digits holds. ``ctc`` trains that sequence reader (needs PyTorch; training only).
"""
