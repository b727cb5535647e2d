# The README's commands. Each target does its own set-up first (quick once cached).
VENV ?= .venv
NP ?= 2

.PHONY: setup example test bench

setup:
	bash scripts/setup.sh

example: setup
	$(VENV)/bin/horovodrun -np $(NP) -H localhost:$(NP) --gloo $(VENV)/bin/python examples/train.py

test: setup
	$(VENV)/bin/python -m pytest

bench: setup
	$(VENV)/bin/horovod-cutoff bench --json
