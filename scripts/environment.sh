# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/test.sh: make sure msa_bench and its requirements are installed, then
# activate that environment. The active virtualenv is used when there is one; otherwise the project-local .venv,
# created on first use. pip runs only when requirements.txt, pyproject.toml, this checkout or the Python changed
# since the last install (a stamp file in the environment records them), so a second call takes a second.

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'msa-bench setup: %s\n' "$*"; }

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    ENVIRONMENT="$VIRTUAL_ENV"
    say "using the active virtualenv $ENVIRONMENT"
else
    ENVIRONMENT="$PROJECT_ROOT/.venv"
    if [[ -x "$ENVIRONMENT/bin/python" ]]; then
        say "using $ENVIRONMENT"
    else
        say "creating a virtualenv in $ENVIRONMENT (python3 -m venv)"
        python3 -m venv "$ENVIRONMENT" || {
            say "python3 -m venv failed: install Python >= 3.11 with its venv module (Debian: apt install python3-venv)"
            exit 1
        }
    fi
    # shellcheck disable=SC1091
    source "$ENVIRONMENT/bin/activate"
fi

STAMP="$ENVIRONMENT/.msa_bench_install_stamp"
INSTALL_KEY="$(
    cd "$PROJECT_ROOT" &&
        { cat requirements.txt pyproject.toml; echo "$PROJECT_ROOT"; python --version; } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$INSTALL_KEY" ]]; then
    say "requirements already installed (requirements.txt and pyproject.toml unchanged)"
else
    say "installing requirements.txt and msa_bench (editable) with pip; the first time takes a few minutes"
    python -m pip install -q -r "$PROJECT_ROOT/requirements.txt" -e "$PROJECT_ROOT"
    echo "$INSTALL_KEY" >"$STAMP"
fi
cd "$PROJECT_ROOT"
