"""A serve-only install (`pip install digitrec[serve]`) works without PyTorch at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"

SCRIPT = r"""
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["safetensors"] = None
from fastapi.testclient import TestClient
from digitrec.api import create_app
from digitrec.config import Settings
from digitrec.predict import Predictor

predictor = Predictor.from_settings(Settings(home=sys.argv[2]))
assert predictor.backend.name == "onnx", predictor.backend.name
with TestClient(create_app(Settings(home=sys.argv[2]))) as client:
    raw = open(sys.argv[1], "rb").read()
    answer = client.post("/api/v1/predict", content=raw, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    print(answer.json()["digit"])
    assert client.get("/readyz").status_code == 200
    torch_only = Settings(home=sys.argv[2], backend="torch")
try:
    Predictor.from_settings(torch_only)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_serving_needs_no_pytorch(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(GOLDEN / "canvas_transparent_7.png"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "7"
    assert lines[1].startswith("DependencyMissing PyTorch is not installed")
