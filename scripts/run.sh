#!/usr/bin/env bash
# Install (see scripts/environment.sh), then run msa-bench with the given overrides: with none, the embedded
# default (a tiny Llama trained here on a generated TOFU-style benchmark, unlearned with MSA).
set -euo pipefail
# shellcheck source=scripts/environment.sh
source "$(dirname "$0")/environment.sh"
say "running: msa-bench $*"
exec msa-bench "$@"
