# Two commands set everything up on a fresh machine:
#   make demo   - installs, then runs the main job on the embedded tiny model pair
#   make test   - installs, then lints and runs the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.srserve-installed
# The CPU wheel of torch; GPU users install their own CUDA torch first and it is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo engine-demo test lint bench proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m srserve.cli.main demo --config deploy/tiny.yaml --out out/demo

engine-demo: install
	$(PY) -m srserve.cli.main generate --prompt "a red fox running through snow" --switch adaptive --out out/engine-demo.mp4

lint: install
	$(PY) -m ruff check srserve tests benchmarks
	$(PY) -m ruff format --check srserve tests benchmarks

test: install
	$(PY) -m ruff check srserve tests benchmarks
	$(PY) -m pytest -q -rs --durations=40

bench: install
	$(PY) benchmarks/engine_speedup.py --out benchmarks/results/engine_speedup_tiny.json

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. srserve/serving/proto/video.proto

clean:
	rm -rf $(VENV) out
