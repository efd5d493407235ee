# make repro: set up .venv, compose params.yaml from conf/, run the default pipeline.
# make test:  set up .venv and run the tests.
# make plots-template: regenerate plots_template/template.html (+ LICENSES/) from the npm packages (needs npm).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup params repro test clean plots-template

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip check
	touch $@

params: setup
	$(BIN)/python -m pipeline.params

repro: params
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest -q tests

plots-template:
	python3 plots_template/build_template.py

clean:
	rm -rf artifacts metrics
