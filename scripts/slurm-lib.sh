# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this file
# Shared by slurm-up.sh and slurm-down.sh (sourced, not run): where the lab cluster lives and how to
# tell whether one of its daemons is running.

# Everything the cluster writes (config, keys, database, state, logs, pid files) lives under LAB, so
# `rm -rf "$LAB"` after slurm-down.sh forgets the cluster. The one exception is the symlink
# /etc/slurm/slurm.conf, which lets plain `sbatch` find the cluster without SLURM_CONF.
LAB=${SLURM_LAB_DIR:-/var/tmp/trl-benchmark-slurm}
ETC=$LAB/etc
RUN=$LAB/run
LOG=$LAB/log
export SLURM_CONF=$ETC/slurm.conf

CLUSTER=trlbench
PARTITION=debug
NODES=(node1 node2)
# Ports away from Slurm's and MariaDB's defaults, so a real installation on the host is not disturbed.
CTLD_PORT=16817
DBD_PORT=16819
MYSQL_PORT=16306
declare -A SLURMD_PORT=([node1]=16821 [node2]=16822)

# Daemons in start order; slurm-down.sh stops them in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-node1 slurmd-node2)

# munged and mariadbd drop root before writing their pid files, so theirs sit in their own directories.
pidfile() {
  case $1 in
    munged) echo "$LAB/munge/munged.pid" ;;
    mariadbd) echo "$LAB/mysql/mariadbd.pid" ;;
    *) echo "$RUN/$1.pid" ;;
  esac
}

# Whether PID is a live process of the named program: after a crash or a reboot, a stale pid can belong
# to an unrelated process, and a killed daemon lingers as a zombie (state Z) until it is reaped.
alive() {
  [[ $(cat "/proc/$1/stat" 2>/dev/null) == "$1 ($2) "[!Z]* ]]
}

# The pid of a lab daemon (munged, slurmd-node1, ...) if it is running.
running_pid() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) && alive "$pid" "${1%%-*}" && echo "$pid"
}
