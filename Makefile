# The two commands of a fresh machine. Both install first (into the active virtualenv, or a project-local .venv
# created on first use; pip runs again only when requirements.txt or pyproject.toml change), see scripts/.
#   make run                          the embedded default run
#   make run ARGS="experiment=smoke"  any msa-bench overrides
#   make test                         ruff and the whole test suite
#   make test ARGS="-x tests/test_training.py"

ARGS ?=

.PHONY: help install run test

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

install:
	@bash -c 'source scripts/environment.sh'

run:
	@scripts/run.sh $(ARGS)

test:
	@scripts/test.sh $(ARGS)
