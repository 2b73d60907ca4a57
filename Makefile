# meterline: `make demo` runs the main job, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA_LIBS := var/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.fetched

.PHONY: install kafka up down status demo test lint typecheck unit integration clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): deploy/kafka/pom.xml
	@echo "fetching Apache Kafka jars from Maven Central into $(KAFKA_LIBS)"
	rm -rf $(KAFKA_LIBS)
	mvn --batch-mode --quiet -f deploy/kafka/pom.xml dependency:copy-dependencies -Dstyle.color=never \
	    -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS) -DincludeScope=runtime
	touch $(KAFKA_STAMP)

up: install kafka
	$(BIN)/meterline up

down: install
	$(BIN)/meterline down

status: install
	$(BIN)/meterline status

demo: install kafka
	$(BIN)/meterline demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check streams schemas tests
	$(BIN)/ruff format --check streams schemas tests

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install kafka
	$(BIN)/pytest tests/integration -q

test: install kafka lint typecheck
	$(BIN)/pytest tests -q

clean:
	rm -rf var/test
