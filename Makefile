# Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make book   build the corpus, run every experiment (cpu scale), build the Jupyter Book
#   make test   install and run the whole pytest suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages: the sampled viola (FluidR3), Chromium for the browser tests, libsndfile.
APT_PACKAGES := fluid-soundfont-gm chromium chromium-driver libsndfile1

.PHONY: install book test lab smoke bench clean-book notebooks

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@bash scripts/install_system.sh $(APT_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch first, pinned, so nothing pulls the CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,lab]'
	# tinysoundfont declares pyaudio (PortAudio) only for playback; biosignalsnotebooks is read
	# for its PLUX EMG files only (with h5py) and its own import is broken; pybela (the Bela
	# client) pins numpy==1.26.0 and bokeh==2.4.3 exactly, though its code runs on numpy 2: its
	# real imports are main dependencies in pyproject.toml. All three without deps.
	$(BIN)/pip install -q --no-deps tinysoundfont==0.3.7 biosignalsnotebooks==0.6.14 pybela==2.0.3
	touch $(STAMP)

book: install
	$(BIN)/mlmlmlm book

test: install
	$(BIN)/python -m pytest -q

smoke: install
	$(BIN)/mlmlmlm book --smoke

bench: install
	$(BIN)/mlmlmlm bench codec --json

lab: install
	$(BIN)/jupyter lab notebooks/

clean-book:
	rm -rf _build book/*/runs book/*/results.md

# Regenerate each .ipynb from its py:percent source (outputs stripped), keeping pairs in sync.
notebooks: install
	$(BIN)/jupytext --quiet --to ipynb notebooks/*.py
