# Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make book   build the corpus, run every experiment (cpu scale), build the Jupyter Book
#   make test   install and run the whole pytest suite
# and one publishes what `make book` built:
#   make publish   push _build/html to the gh-pages branch (GitHub Pages serves it)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages: the sampled viola (FluidR3), Chromium for the browser tests, libsndfile,
# PortAudio for the live engine's sound card (without it `mlmlmlm live` runs on files only).
# CI on Ubuntu sets BROWSER_PACKAGES empty: its runner has Chrome and chromedriver already.
BROWSER_PACKAGES ?= chromium chromium-driver
APT_PACKAGES := fluid-soundfont-gm $(BROWSER_PACKAGES) libsndfile1 libportaudio2
# Where pip finds the torch wheel: empty = the configured index (the CPU wheel on our machines);
# CI points it at PyTorch's CPU-only index so that no CUDA build is pulled.
TORCH_INDEX ?=
# What `make publish` pushes, and where to.
HTML   ?= _build/html
REMOTE ?= origin

.PHONY: install lock book test lab smoke bench clean-book notebooks publish

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@bash scripts/install_system.sh $(APT_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch first, pinned, so nothing pulls the CUDA build
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# every other dependency at the version of a known-good install (constraints.txt, `make lock`)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,lab,docs]'
	# tinysoundfont declares pyaudio (PortAudio) only for playback; biosignalsnotebooks is read
	# for its PLUX EMG files only (with h5py) and its own import is broken; pybela (the Bela
	# client) pins numpy==1.26.0 and bokeh==2.4.3 exactly, though its code runs on numpy 2: its
	# real imports are main dependencies in pyproject.toml. All three without deps.
	$(BIN)/pip install -q -c constraints.txt --no-deps tinysoundfont==0.3.7 biosignalsnotebooks==0.6.14 pybela==2.0.3
	# librosa's numba functions compiled once, alone: two processes compiling them at the same
	# time leave a cache that segfaults later ones (mlmlmlm/jit_cache.py)
	$(BIN)/python -m mlmlmlm.jit_cache
	touch $(STAMP)

# Rewrite constraints.txt from this environment (after a deliberate upgrade that passed make test).
lock: install
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

book: install
	$(BIN)/mlmlmlm book

test: install
	$(BIN)/python -m pytest -q --durations=15

smoke: install
	$(BIN)/mlmlmlm book --smoke

bench: install
	$(BIN)/mlmlmlm bench codec --json

lab: install
	$(BIN)/jupyter lab notebooks/

clean-book:
	rm -rf _build book/*/runs book/*/results.md book/*/_figures

# The built book to the gh-pages branch of $(REMOTE), replacing what was there (ghp-import;
# .nojekyll so that GitHub Pages serves Sphinx's _static/ folders). Not part of `make book`:
# publishing is a choice. Refuses in one line when there is no built book.
publish:
	@test -f $(HTML)/index.html || { echo "make publish: no built book in $(HTML)/ (run make book first)" >&2; exit 1; }
	@test -x $(BIN)/ghp-import || { echo "make publish: $(BIN)/ghp-import is missing (run make install)" >&2; exit 1; }
	$(BIN)/ghp-import --no-jekyll --force --push --remote $(REMOTE) --branch gh-pages \
	  --message "Book built from $$(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')" $(HTML)

# Regenerate each .ipynb from its py:percent source (outputs stripped), keeping pairs in sync.
notebooks: install
	$(BIN)/jupytext --quiet --to ipynb notebooks/*.py
