#!/usr/bin/env bash
# Install (see scripts/environment.sh), then lint and test: ruff check, ruff format --check, pytest on every core
# (pytest-xdist; the tests use one torch thread each). Arguments go to pytest (e.g. `scripts/test.sh -x tests/test_training.py`).
# Exits non-zero on the first failing step.
set -euo pipefail
# shellcheck source=scripts/environment.sh
source "$(dirname "$0")/environment.sh"
say "ruff check msa_bench tests scripts"
ruff check msa_bench tests scripts
say "ruff format --check msa_bench tests scripts"
ruff format --check msa_bench tests scripts
say "pytest -q -n auto $*"
exec pytest -q -n auto "$@"
