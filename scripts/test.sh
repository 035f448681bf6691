#!/usr/bin/env bash
# Install, start the throw-away Slurm cluster the tests submit to, run the whole suite, stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Jobs the tests launch say `python ...`, as users do: it must be this venv's.
source .venv/bin/activate
bash scripts/slurm-up.sh
trap 'bash scripts/slurm-down.sh' EXIT
# The lab's SLURM_CONF for everything below: never another cluster's /etc/slurm/slurm.conf.
source scripts/slurm-lib.sh
ruff check .
# tests/report checks the report's index.html in a real headless browser.
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
# pytest's own exit code stands: 5 ("no tests ran") fails this script like any failure.
python -m pytest "$@"
