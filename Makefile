# Set-up and entry points. `make demo` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test test-slow test-interop interop-install lint install data clean

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

# Tests run on every core (pytest-xdist; each worker gets its share of torch threads, tests/conftest.py), then the
# few that need the machine to themselves. --durations: the slowest tests (CI must stay under 10 minutes).
PYTEST_PARALLEL := -q -n auto --dist worksteal --durations=10 --ignore=tests/interop

test: install data
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not serial"
	$(BIN)/python -m pytest -q --ignore=tests/interop -m serial

test-slow: install data
	RUN_SLOW=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not serial"
	RUN_SLOW=1 $(BIN)/python -m pytest -q --ignore=tests/interop -m serial

# The interop tier (not part of `make test`): torchvision and timm models through profile, deploy and ONNX.
# torchvision does not import beside the local torch 2.13.0 CPU wheel, so this tier has its own venv with
# torch 2.14.1 + torchvision 0.29.1 (a CUDA build that runs on the CPU, ~5.5 GB, from the local wheel store)
# and timm. The package goes in last: torch>=2.4 is then already met, so pip leaves torch 2.14.1 alone
# (the version check below fails the set-up if anything swapped it).
IVENV := .venv-interop
IBIN := $(IVENV)/bin
INTEROP_TORCH := 2.14.1

interop-install: $(IVENV)/.installed

$(IVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(IVENV)
	$(IBIN)/pip install --quiet torch==$(INTEROP_TORCH) torchvision==0.29.1
	$(IBIN)/pip install --quiet timm
	$(IBIN)/pip install --quiet -e '.[export]' pytest
	$(IBIN)/python -c "import torch, torchvision, timm; assert torch.__version__.split('+')[0] == '$(INTEROP_TORCH)', torch.__version__"
	touch $@

test-interop: interop-install
	$(IBIN)/python -m pytest -q -s tests/interop

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .venv-interop build *.egg-info .pytest_cache
