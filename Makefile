# Set-up and entry points. `make demo` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test test-slow lint install data clean

install: $(VENV)/.installed

# torch is installed first, pinned: 2.13.0 is the local CPU wheel (a range would pull CUDA builds).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: $(DATA)

$(DATA):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist

# The main job: vgg11_gmp and its low-rank twin vgg11_gmp_lr (width 0.25) trained on Fashion-MNIST and compared.
demo: install data
	$(BIN)/lowrankcnn demo --out runs/demo

test: install data
	$(BIN)/python -m pytest -q

test-slow: install data
	RUN_SLOW=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
