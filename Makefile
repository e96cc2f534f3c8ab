# Tailor: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
S3_PORT ?= 8333

# Offline-friendly Prefect and GX, with their state kept under var/.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/var/prefect
# Demo-only credentials for the local SeaweedFS server and a demo pseudonymisation key.
# Real deployments take these from their environment or AWS profile, never from files.
export AWS_ACCESS_KEY_ID ?= tailor-demo
export AWS_SECRET_ACCESS_KEY ?= tailor-demo-secret
export AWS_DEFAULT_REGION ?= us-east-1
export TAILOR_PSEUDONYM_KEY ?= demo-only-pseudonym-key

.PHONY: install demo demo-data demo-stop s3-start test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing Tailor and its dependencies into $(VENV) (about 2 minutes the first time)"
	@# pip says nothing while it unpacks the wheels it collected (about 40 s): a line every 15 s meanwhile
	@( while sleep 15; do echo "  still installing ($$SECONDS s)"; done ) & ticker=$$!; \
	$(BIN)/pip install --disable-pip-version-check --progress-bar off -e ".[dev]"; status=$$?; \
	kill $$ticker; exit $$status
	mkdir -p var
	touch $@

install: $(VENV)/.installed

s3-start: install
	$(BIN)/python -m tailor.s3server start --dir var/s3 --port $(S3_PORT) --bucket tailor --pidfile var/s3.pid

demo-data: install
	test -f var/demo/tailor.yaml || $(BIN)/tailor generate --users 20000 --items 2000 --days 60 --out var/demo

demo: s3-start demo-data
	$(BIN)/tailor run --config config/demo.yaml --presign 86400
	@echo
	@echo "SeaweedFS is still serving s3://tailor on http://127.0.0.1:$(S3_PORT) (stop it: make demo-stop)."

demo-stop:
	$(BIN)/python -m tailor.s3server stop --pidfile var/s3.pid

# the suite on TEST_WORKERS processes (a test file stays on one, with its fixtures): most tests wait on a
# server or a subprocess, so 2 workers on 2 cores take about 15 minutes where one takes over 20
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# the nightly flow end to end at three sizes, each a first load then a steady night (about 80 minutes in
# all on 2 cores), then the gate on its own
bench: install
	for users in 100000 300000 1000000; do \
		$(BIN)/python bench/nightly.py --users $$users --night first && \
		$(BIN)/python bench/nightly.py --users $$users --night steady || exit 1; \
	done
	$(BIN)/python bench/tables.py var/bench/nightly-100000 var/bench/nightly-300000 var/bench/nightly-1000000
	$(BIN)/python bench/gate.py --users 200000 --days 60 --out var/bench/gate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	-$(BIN)/python -m tailor.s3server stop --pidfile var/s3.pid
	rm -rf var
