# segura.backup — the two commands of the README, and the pieces they are made of.
#   make demo   bring up the lab, seed a small reference appliance, back it up, list and verify it
#   make test   everything CI runs: sanity, lint, unit + integration tests against the real lab, molecule
SHELL := /bin/bash
PY := .venv/bin/python
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export ANSIBLE_NOCOLOR := 1

.PHONY: setup demo test lab-up lab-down sanity lint unit integration build clean molecule

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

lab-up: setup
	@$(PY) -m tests.lab up

lab-down:
	@$(PY) -m tests.lab down

sanity: setup
	@bash scripts/sanity.sh

lint: setup
	@PATH=$(CURDIR)/.venv/bin:$$PATH bash scripts/lint.sh
	@.venv/bin/ansible-lint --offline

unit: setup
	@.venv/bin/pytest -q tests/unit

molecule: setup
	@bash scripts/molecule.sh

build: setup
	@.venv/bin/ansible-galaxy collection build --force --output-path .build/dist .

clean: lab-down
	rm -rf .build .lab
