"""The tutorial baseline: a Flask MNIST app as the tutorials write it, for comparison.

Flask's development server answering one request at a time (``app.run(threaded=False)``),
PyTorch eager on the same weights as ours (the shipped model), and the per-request
preprocessing of the tutorials: PIL decode -> greyscale -> resize to 28x28 -> invert ->
normalise. It takes the same raw-body POST as ``digitrec serve`` (``POST
/api/v1/predict`` with an ``image/*`` body), so one client drives both.

    python benchmarks/baseline_flask.py --port 5000

Only the benchmark constants differ from a tutorial: the mean and std are read from the
model's manifest rather than typed in, and OMP_WAIT_POLICY=PASSIVE is kept (importing
digitrec sets it), which helps the baseline on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from flask import Flask, jsonify, request
from PIL import Image

from common import bundled_model
from digitrec.predict import load_torch_model


def create_app() -> Flask:
    entry = bundled_model()
    spec = entry.preprocessing
    model = load_torch_model(entry)  # eval mode, the shipped safetensors weights
    app = Flask(__name__)

    @app.post("/api/v1/predict")
    def predict() -> object:
        img = Image.open(io.BytesIO(request.get_data())).convert("L").resize((28, 28))
        pixels = 1.0 - np.asarray(img, dtype=np.float32) / 255.0  # MNIST: white ink on black
        x = torch.from_numpy((pixels - spec.mean) / spec.std)[None, None]
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        values, digits = probs.topk(3)
        return jsonify(
            {
                "digit": int(digits[0]),
                "top": [
                    {"digit": int(d), "probability": round(float(p), 6)}
                    for d, p in zip(digits, values, strict=True)
                ],
            }
        )

    @app.get("/readyz")
    def readyz() -> object:
        return jsonify({"ready": True})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    create_app().run(host=args.host, port=args.port, threaded=False, debug=False)


if __name__ == "__main__":
    main()
