#!/usr/bin/env bash
# Stop the daemons slurm-up.sh started, by their pid files, and nothing else. Safe to call twice.
# With arguments, stop only those daemons: `bash scripts/slurm-down.sh slurmctld` takes the controller
# away (jobs and nodes stay); `bash scripts/slurm-up.sh` brings it back.
# Daemons: munged mariadbd slurmdbd slurmctld slurmd-node1 slurmd-node2.
set -euo pipefail
# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"

stop() {
  local pid i
  if pid=$(running_pid "$1"); then
    kill -TERM "$pid"
    # MariaDB flushes to disk on the way out; give it time before forcing.
    for ((i = 0; i < 100; i++)); do
      alive "$pid" "${1%%-*}" || break
      sleep 0.1
    done
    if alive "$pid" "${1%%-*}"; then kill -KILL "$pid"; fi
  fi
  rm -f "$(pidfile "$1")"
}

if [ $# -gt 0 ]; then
  for daemon in "$@"; do
    [[ " ${DAEMONS[*]} " == *" $daemon "* ]] || { echo "slurm-down.sh: unknown daemon $daemon" >&2; exit 2; }
    stop "$daemon"
  done
else
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[i]}"; done
fi
