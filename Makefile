# CellMind's developer commands. `make test` and `make demo` create .venv and install what they need.
#
# TORCH_SPEC picks the PyTorch build installed before CellMind. The default is the CPU build; users with a GPU
# can run e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin

.PHONY: test test-faults demo bench browser catalog clean

$(BIN)/cellmind: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The browser test drives Debian's chromium through Playwright; nothing downloads a browser at run time.
# fonts-nanum gives the page's Korean text real glyphs in the test's screenshots.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/truetype/nanum ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum >/dev/null; \
		else echo "chromium or fonts-nanum is missing: run 'sudo apt-get install chromium fonts-nanum' for the browser test"; fi; \
	fi

# Compiled catalogs follow their .po files, also in an editable install made before the .po last changed.
MO_FILES := $(patsubst %.po,%.mo,$(wildcard cellmind/locale/*/LC_MESSAGES/*.po))
%.mo: %.po $(BIN)/cellmind
	$(BIN)/python -m cellmind.i18n_catalog compile

# Re-extract the messages into the .po files, compile them, and list those that still lack a translation.
catalog: $(BIN)/cellmind
	$(BIN)/python -m cellmind.i18n_catalog update

test: $(BIN)/cellmind browser $(MO_FILES)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Slow and lossy links between network namespaces need root and take minutes: run them on purpose.
# The other swarm faults (tests/test_faults.py) run in `make test` too.
test-faults: $(BIN)/cellmind
	CELLMIND_FAULT_TESTS=1 $(BIN)/python -m pytest tests/test_faults.py tests/test_slow_links.py $(PYTEST_ARGS)

demo: $(BIN)/cellmind
	$(BIN)/pip install --quiet -e '.[demo]'
	$(BIN)/python -m cellmind.demo

bench: $(BIN)/cellmind
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
