# The commands the README names. Each installs what it needs on first use into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c requirements.lock
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: serve test lint train evaluate bench bench-replicas script-model bench-scripts walkthrough bench-train load attack fault docker-lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs no PyTorch: the committed model runs on ONNX Runtime.
$(VENV)/.serve: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) -e '.[serve]'
	@touch $@

$(VENV)/.dev: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) -e '.[dev]'
	@touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## start the web app and API on http://127.0.0.1:8000
	$(BIN)/digitrec serve

test: $(VENV)/.dev lint  ## lint, then every test (unit, API, server, browser)
	$(BIN)/pytest

lint: $(VENV)/.dev  ## ruff, mypy and hadolint
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

train: $(VENV)/.dev  ## train the default recipe (about 9 minutes on 2 cores)
	$(BIN)/digitrec train

evaluate: $(VENV)/.dev  ## measure the newest model: MNIST test, redrawn digits, non-digits
	$(BIN)/digitrec evaluate

bench: $(VENV)/.dev  ## inference, HTTP (golden PNG and a realistic mix), not-a-digit and prediction-log benchmarks -> benchmarks/results/
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_http.py
	$(BIN)/python benchmarks/bench_rejection.py
	$(BIN)/python benchmarks/bench_logging.py
	$(BIN)/python benchmarks/bench_realistic.py
	$(BIN)/python benchmarks/bench_decoders.py
	$(BIN)/python benchmarks/summary.py

SCRIPT_HOME ?= build/scripts

script-model: $(VENV)/.dev  ## digits of other scripts: draw them from fonts, train and tune the script model (about an hour)
	out=src/digitrec/script_model/$$(date -u +%Y%m%d-%H%M%S) && \
	  $(BIN)/python scripts/train_script_model.py --home $(SCRIPT_HOME) --out $$out --draw 3000 --threads 2 && \
	  $(BIN)/python scripts/tune_script_model.py $$out --home $(SCRIPT_HOME)

bench-scripts: $(VENV)/.dev  ## per-script accuracy on held-out fonts (after make script-model)
	$(BIN)/python benchmarks/bench_scripts.py --home $(SCRIPT_HOME)
	$(BIN)/python benchmarks/summary.py

bench-replicas: $(VENV)/.dev  ## requests/s through HAProxy with 1, 2 and 3 replicas on PostgreSQL and Redis
	$(BIN)/python benchmarks/bench_replicas.py
	$(BIN)/python benchmarks/summary.py

walkthrough: $(VENV)/.dev  ## the lifecycle loop for real (A/B, corrections, retrain, promote, roll back)
	$(BIN)/python benchmarks/lifecycle_walkthrough.py

bench-train: $(VENV)/.dev  ## our recipe vs the tutorial recipe, same data, same run
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/summary.py

load: $(VENV)/.dev  ## 60 s at concurrency 32 against a real server on loopback
	$(BIN)/python benchmarks/load_test.py

attack: $(VENV)/.dev  ## replay the hardening issue's attacks on loopback (~5 min), 1 and 2 workers
	$(BIN)/python benchmarks/adversarial.py
	$(BIN)/python benchmarks/summary.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
