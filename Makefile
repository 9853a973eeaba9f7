# genre-cnn: `make demo` runs the walkthrough end to end, `make test` checks everything.
# Both create .venv and install requirements.txt on first use (Python 3.11+).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make course` runs the report's settings on FMA-small unless GENRE_PROFILE or GENRE_DATA say otherwise
# (the data folder made absolute: the notebooks run in notebooks/)
COURSE_PROFILE := $(or $(GENRE_PROFILE),seed)
COURSE_DATA := $(abspath $(or $(GENRE_DATA),data/fma))
export GENRE_PROFILE ?= demo
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# the lessons of the report's experiment: dataset, features, model, training, results, what the network hears
COURSE_NOTEBOOKS := $(addprefix notebooks/,01_dataset.ipynb 02_features.ipynb 03_model.ipynb 04_training.ipynb \
	05_results.ipynb 10_interpretation.ipynb)
EXECUTE := $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 \
	--ExecutePreprocessor.record_timing=False

.PHONY: setup musicnn fma data demo course test unit-tests notebook-tests seed-notebooks report lab clean

MUSICNN_WEIGHTS := cache/musicnn/msd_musicnn.npz cache/musicnn/mtt_musicnn.npz

setup: $(VENV)/.installed $(MUSICNN_WEIGHTS)

# uv installs the same pinned wheels as pip, three times faster (55 s -> 19 s from a warm cache); it
# compiles the bytecode up front, as pip does, so no process pays for it on import
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.9
	$(BIN)/python -m uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.txt
	touch $@

musicnn: $(MUSICNN_WEIGHTS)  ## the pretrained musicnn weights, MSD and MTT networks (musicnn 0.1.0, ISC licence), from PyPI once

# one command writes both files: a pattern rule with two targets runs it once, under make -j too (a rule
# naming the two files would run it once for each, side by side)
cache/%/msd_musicnn.npz cache/%/mtt_musicnn.npz: | $(VENV)/.installed
	$(BIN)/python genre_utils.py musicnn-weights

fma: setup  ## download, verify and unpack FMA-small and its metadata into $GENRE_DATA (default data/fma), then check it
	$(BIN)/python genre_utils.py download metadata small

data: setup  ## generate the demo dataset (data/demo) unless it is there; the tests use it
	$(BIN)/python genre_utils.py --profile demo --data data/demo demo-data

demo: data  ## execute every notebook in order, in place; writes figures/
	for nb in $(NOTEBOOKS); do $(EXECUTE) "$$nb" || exit 1; done

# every long step prints its expected duration when it starts; 06 to 09 are the extras, run on
# demand (open them in `make lab` with the same GENRE_PROFILE and GENRE_DATA): each of their trainings
# says its cost before it runs
course: setup  ## the report's experiment on FMA-small (`make fma` first): notebooks 01-05 and 10, seed preset, in place
	for nb in $(COURSE_NOTEBOOKS); do GENRE_PROFILE=$(COURSE_PROFILE) GENRE_DATA=$(COURSE_DATA) $(EXECUTE) "$$nb" || exit 1; done

# two jobs share two cores: one TensorFlow thread each keeps their pools from competing (from a
# fresh clone 8 min 17 s to 9 min 17 s, without it 10 min 26 s: the unit tests 302 s instead of 385 s),
# and one OpenMP thread (numpy's OpenBLAS) each: else a second thread spins after every matrix product,
# burning a core the other job needs (musicnn embedding the demo: 47 s of CPU for 29 s, with it 28 s for
# 23 s; make test from a fresh clone 430 s, with it 369 s)
test: export TF_NUM_INTRAOP_THREADS ?= 1
test: export OMP_NUM_THREADS ?= 1
test: data  ## formatting and lint (ruff), then the unit tests and the notebooks, two at a time
	$(BIN)/ruff format --check --quiet . && $(BIN)/ruff check --quiet .
	@echo "unit tests and notebooks run two at a time; each prints its output when it ends"
	$(MAKE) --no-print-directory -j2 --output-sync=target unit-tests notebook-tests

unit-tests: setup  ## the unit tests and the module's doctests
	$(BIN)/python -m pytest tests/ --doctest-modules genre_utils.py --durations=5

# nbval re-executes each notebook in quick mode (GENRE_QUICK=1) and compares its outputs with the
# committed ones. A notebook waits only for the notebooks whose caches and runs it reads; with -j2
# the longest such chain (02 -> 04 -> 07 -> 10) starts beside the unit tests and the other notebooks,
# the longest first, fill the cores as they free up (fresh clones: 11 min 5 s before, 8 min 17 s
# to 9 min 17 s after)
FIRST_NOTEBOOKS := $(addprefix nbval-,02_features 04_training 07_pretrained 10_interpretation 06_experiments)
NOTEBOOK_TESTS := $(FIRST_NOTEBOOKS) seed-notebooks $(filter-out $(FIRST_NOTEBOOKS),$(NOTEBOOKS:notebooks/%.ipynb=nbval-%))
notebook-tests: $(NOTEBOOK_TESTS)  ## every notebook re-executed and compared by nbval
nbval-%: data
	GENRE_QUICK=1 $(BIN)/python -m pytest --nbval -q notebooks/$*.ipynb
nbval-03_model nbval-04_training: nbval-02_features  # the feature cache
nbval-05_results nbval-06_experiments nbval-07_pretrained: nbval-04_training  # the run runs/quick/demo-full
nbval-08_finetuning: nbval-04_training nbval-07_pretrained  # that run, and the musicnn embeddings 07 caches
nbval-10_interpretation: nbval-04_training nbval-07_pretrained  # that run, and the musicnn embeddings 07 caches

# notebooks 01-05 with the report's settings (seed preset: 30 s clips, full-width network) in quick mode
# on 4 clips a genre in FMA's layout with a real download's faults (an empty, an undecodable and a short
# file, each in its own genre): their checks must hold on real data too. Outputs are not compared (they
# are the demo's); one epoch (the seed network's steps cost ~30x the demo's), its figures in their own
# folder. Three of the eight genres, as each clip costs time: the checks ask for every split of every
# genre, not for eight genres (from scratch 61 s against 72 s with five); rebuilt when the Makefile, and
# so the genre list, changes
FMA_FIXTURE := data/fma-fixture
FIXTURE_GENRES := Hip-Hop,Pop,Folk
# built afresh each time (its faults are made on a new set), and removed when that fails, so that a half-made
# set is never taken for finished
$(FMA_FIXTURE)/fma_metadata/tracks.csv: tests/fma_fixture.py Makefile | $(VENV)/.installed
	rm -rf $(FMA_FIXTURE)
	$(BIN)/python tests/fma_fixture.py $(FMA_FIXTURE) $(FIXTURE_GENRES) || { rm -rf $(FMA_FIXTURE); exit 1; }
seed-notebooks: $(FMA_FIXTURE)/fma_metadata/tracks.csv
	GENRE_PROFILE=seed GENRE_QUICK=1 GENRE_DATA=$(abspath $(FMA_FIXTURE)) \
		GENRE_SETTINGS="epochs=1 figures_dir=runs/quick/seed-figures genres=$(FIXTURE_GENRES)" \
		$(BIN)/python -m pytest --nbval-lax -q $(filter-out %/10_interpretation.ipynb,$(COURSE_NOTEBOOKS))

report: setup  ## the executed notebooks as one HTML page in report/; the figures in report/figures/, with report/figures.tex and figures.md
	$(BIN)/python genre_utils.py report

lab: setup  ## open the walkthrough in JupyterLab
	$(BIN)/jupyter lab notebooks/

clean:  ## remove generated data, caches and runs (keeps .venv and figures/)
	rm -rf data cache runs report
