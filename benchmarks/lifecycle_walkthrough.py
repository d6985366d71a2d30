"""The model lifecycle loop, run for real: serve -> A/B test -> corrections -> retrain ->
promote -> roll back. Its transcript is what the README's "Model lifecycle" section shows.

In a fresh home folder: `digitrec serve` on loopback; an A/B test of the older shipped
model against production; simulated users (one X-Client-Id each) send MNIST test digits
redrawn as the realistic variants people send (drawings, photos, fat markers) and
correct every answer with the digit's true label; `ab status`; `train --with-feedback`
fine-tunes production on the corrections; the new version is promoted, then rolled back.
Every command's real output goes to ``benchmarks/results/lifecycle_walkthrough.txt``.

    python benchmarks/lifecycle_walkthrough.py          # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from common import RESULTS, ServerProcess, digitrec_serve_command, server_env
from digitrec.config import Settings
from digitrec.data import load_mnist
from digitrec.realistic import VARIANTS
from digitrec.registry import BUNDLED_ROOT, Registry
from digitrec.storage import atomic_write_text

PREDICT, FEEDBACK = "/api/v1/predict", "/api/v1/feedback"


class Transcript:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.lines: list[str] = []

    def run(self, *args: str, record: bool = True) -> str:
        """Run `digitrec ARGS` in the walkthrough's home; record the command and output."""
        done = subprocess.run(
            [sys.executable, "-m", "digitrec.cli", *args],
            capture_output=True,
            text=True,
            env={**server_env(self.home), "PATH": "/usr/bin:/bin"},
            timeout=1800,
        )
        if record:
            self.lines += [f"$ digitrec {' '.join(args)}", done.stdout.rstrip()]
        if done.returncode != 0:
            raise SystemExit(f"digitrec {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def note(self, text: str) -> None:
        self.lines += [f"# {text}"]


def users_send_and_correct(url: str, clients: int, per_client: int) -> dict[str, int]:
    """Each simulated user sends distinct MNIST test digits, each redrawn in one of the
    realistic variants in turn, and corrects every answer with the digit's label."""
    mnist = load_mnist(Settings(), progress=False)
    start = 7000  # test digits 7000 on: no digit is sent twice
    rng = np.random.default_rng(11)
    variants = list(VARIANTS.values())
    sent = {"answers": 0, "corrections": 0, "wrong": 0}
    with httpx.Client(base_url=url, timeout=30) as http:
        for n in range(clients * per_client):
            label = int(mnist.test_labels[start + n])
            raw = variants[n % len(variants)](mnist.test_images[start + n], rng)
            headers = {"content-type": "image/png", "x-client-id": f"user-{n % clients}"}
            answer = http.post(PREDICT, content=raw, headers=headers).json()
            right = answer["verdict"] == "digit" and answer["digit"] == label
            body = {"prediction_id": answer["prediction_id"]}
            body.update({"correct": True} if right else {"label": label})
            http.post(FEEDBACK, json=body).raise_for_status()
            sent["answers"] += 1
            sent["corrections"] += 1
            sent["wrong"] += not right
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=120)
    parser.add_argument("--per-client", type=int, default=5)
    args = parser.parse_args()
    older = next(e for e in Registry(BUNDLED_ROOT, extra_roots=()).list() if not e.dry_run)
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as tmp:
        home = Path(tmp) / "home"
        t = Transcript(home)
        t.run("models", "list")
        t.run("ab", "start", "--candidate", older.version, "--share", "0.5")
        server = ServerProcess(digitrec_serve_command(), Path(tmp) / "serve.log", server_env(home))
        try:
            server.wait_ready()
            sent = users_send_and_correct(server.url, args.clients, args.per_client)
        finally:
            server.stop()
        t.note(
            f"{args.clients} users (X-Client-Id user-0 ...) sent {sent['answers']} MNIST test "
            "digits redrawn as drawings, photos and marker writing, and corrected every "
            f"answer ({sent['wrong']} were wrong)"
        )
        t.run("ab", "status")
        t.run("ab", "stop")
        t.run("feedback", "list", "--limit", "3")
        t.run("train", "--with-feedback", "--no-progress")
        new = json.loads(t.run("models", "list", "--json", record=False))[-1]["version"]
        t.run("models", "show", new)
        t.run("models", "promote", new)
        t.run("models", "list")
        t.run("models", "rollback")
        t.run("models", "list")
    path = RESULTS / "lifecycle_walkthrough.txt"
    atomic_write_text(path, "\n".join(t.lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
