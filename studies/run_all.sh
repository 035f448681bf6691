#!/usr/bin/env bash
# The five studies, one after the other: bash studies/run_all.sh [--scale cpu|gpu] [flags of lib.sh].
# At --scale cpu it installs the project, starts the lab Slurm cluster first and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --scale gpu "* ]]; then
  bash scripts/setup.sh
  source .venv/bin/activate
  bash scripts/slurm-up.sh
  trap 'bash scripts/slurm-down.sh' EXIT
  source scripts/slurm-lib.sh
fi
for study in baseline grad_accum model_size peft control; do
  bash "studies/$study.sh" "$@"
done
