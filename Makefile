# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ZOO ?= $(HOME)/.cache/autotl/zoo
DEMO_OUT ?= runs/demo
DEMO_BACKBONES ?= test_resnet test_efficientnet test_vit

.PHONY: setup browser test test-fast demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The report's browser test needs Chromium: install Debian's package when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	    || echo "warning: could not install chromium; the browser test will fail"; }

test: setup browser
	AUTOTL_REQUIRE_BROWSER=1 AUTOTL_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Pretrain tiny timm backbones on digits 0-4 (cached in the zoo), then search digits 5-9 offline.
demo: setup
	@for arch in $(DEMO_BACKBONES); do \
	  if [ ! -f "$(ZOO)/digits-$$arch.safetensors" ]; then \
	    $(BIN)/autotl pretrain builtin:digits-source --backbone timm/$$arch --epochs 6 --device cpu \
	      --out "$(ZOO)/digits-$$arch.safetensors" || exit 1; \
	  fi; \
	done
	$(BIN)/autotl search builtin:digits --space quick --backbones 'zoo/digits-*' --zoo "$(ZOO)" \
	  --trials 20 --epochs 8 --seed 0 --device cpu --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs build *.egg-info
