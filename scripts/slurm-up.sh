#!/usr/bin/env bash
# Start the throw-away Slurm cluster the tests submit to: nodes node1 and node2 on this host (8 CPUs and
# 2 fake GPUs each) in partition `debug`, accounting through slurmdbd + MariaDB so `sacct` works.
# Runs as root, without systemd. Idempotent: it starts only the daemons that are not running, so it
# also restarts a controller stopped with `bash scripts/slurm-down.sh slurmctld`.
# Env: SLURM_LAB_DIR (default /var/tmp/trl-benchmark-slurm), SLURM_UP_TIMEOUT (seconds, default 120).
set -Eeuo pipefail
# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"

[ "$(id -u)" = 0 ] || { echo "slurm-up.sh: must run as root" >&2; exit 1; }

install_packages() {
  local pkg missing=()
  for pkg in munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  # A fresh image may have no package lists; otherwise `apt-get update` is time wasted.
  apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get update -q
  # Another apt-get may be running (a parallel setup): wait for its lock rather than fail.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
    "${missing[@]}"
}

# A log file the daemon can append to after dropping root.
owned_log() {
  [ -f "$LOG/$1.log" ] || install -o "$2" -m 0640 /dev/null "$LOG/$1.log"
}

write_config() {
  local host node
  host=$(hostname -s)
  mkdir -p "$ETC" "$RUN" "$LOG" "$LAB/state" "$LAB/spool" "$LAB/gpu"
  # Slurm's gres plugin insists on device files; symlinks to /dev/null pass (plain files do not).
  ln -sfn /dev/null "$LAB/gpu/nvidia0"
  ln -sfn /dev/null "$LAB/gpu/nvidia1"
  [ -f "$ETC/db-password" ] || (umask 077 && head -c 18 /dev/urandom | base64 >"$ETC/db-password")

  cat >"$ETC/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (default 120 s); fault tests requeue.
AuthInfo=socket=$LAB/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
# No cgroups without systemd: track job processes through /proc and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Nodes may declare more CPUs and memory than this machine has (else they go INVAL).
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Schedule every second rather than every minute, so tests do not wait on the scheduler.
SchedulerParameters=sched_interval=1
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass=$LAB/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# A DOWN node comes back by itself once its slurmd registers again.
ReturnToService=2
MaxArraySize=10001
KillWait=5
InactiveLimit=0
EOF
  for node in "${NODES[@]}"; do
    echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=${SLURMD_PORT[$node]}" \
      "CPUs=8 RealMemory=8192 Gres=gpu:2 State=UNKNOWN" >>"$ETC/slurm.conf"
  done
  echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP" \
    >>"$ETC/slurm.conf"

  cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$LAB/gpu/nvidia[0-1]
EOF

  # slurmdbd refuses a config file readable by others (it holds the database password).
  (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$LAB/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/db-password")
StorageLoc=slurm_acct_db
EOF
  )

  # Plain `sbatch`/`sacct` read /etc/slurm/slurm.conf; never overwrite a real cluster's config there.
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$ETC/slurm.conf" ]; then
    echo "slurm-up.sh: /etc/slurm/slurm.conf exists and is not this lab's; leaving it alone." >&2
    echo "  Use the lab cluster with: export SLURM_CONF=$ETC/slurm.conf" >&2
  else
    ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
  fi
}

# The end of a daemon's log, for error messages.
show_log() {
  echo "--- last lines of $LOG/$1.log:" >&2
  tail -n 25 "$LOG/$1.log" >&2 || true
}

# Wait until a command succeeds; past the deadline, fail showing the tail of the daemon's log.
wait_for() {
  local what=$1 log=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
      echo "slurm-up.sh: timed out waiting for $what" >&2
      show_log "$log"
      exit 1
    fi
    sleep 0.2
  done
}

start_munged() {
  # munged rejects a socket or key directory that others can write to.
  install -d -o munge -g munge -m 0755 "$LAB/munge"
  if [ ! -f "$LAB/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$LAB/munge/munge.key"
    chown munge:munge "$LAB/munge/munge.key"
    chmod 0400 "$LAB/munge/munge.key"
  fi
  owned_log munged munge
  runuser -u munge -- munged --key-file="$LAB/munge/munge.key" --socket="$LAB/munge/munge.socket" \
    --pid-file="$(pidfile munged)" --log-file="$LOG/munged.log" --seed-file="$LAB/munge/munged.seed"
  wait_for munged munged munge --socket="$LAB/munge/munge.socket" --no-input
}

start_mariadbd() {
  local sock=$LAB/mysql/mysqld.sock
  # MariaDB runs as mysql and must own the directory of its socket.
  install -d -o mysql -g mysql -m 0750 "$LAB/mysql"
  owned_log mariadbd mysql
  [ -d "$LAB/mysql/data/mysql" ] ||
    mariadb-install-db --no-defaults --user=mysql --datadir="$LAB/mysql/data" >>"$LOG/mariadbd.log" 2>&1
  # --no-defaults: Debian's my.cnf would move the socket and port to the system's.
  setsid mariadbd --no-defaults --user=mysql --datadir="$LAB/mysql/data" --socket="$sock" \
    --pid-file="$(pidfile mariadbd)" --bind-address=127.0.0.1 --port="$MYSQL_PORT" --skip-name-resolve \
    --log-error="$LOG/mariadbd.log" </dev/null >/dev/null 2>&1 &
  wait_for mariadbd mariadbd mariadb-admin --no-defaults --socket="$sock" -u root ping
  # Root logs in through the socket (unix_socket auth); slurmdbd comes over TCP with a password.
  mariadb --no-defaults --socket="$sock" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$ETC/db-password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
  slurmdbd
  wait_for slurmdbd slurmdbd sacctmgr -n list cluster
  # slurmctld's accounting is lost until its cluster exists in the database.
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurmctld() {
  slurmctld
  wait_for slurmctld slurmctld scontrol ping
}

start_slurmd() {
  slurmd -N "${1#slurmd-}"
}

# Node states survive restarts (StateSaveLocation), so a node left DOWN, DRAIN or INVAL by an earlier
# session or a fault test is resumed here; a node still registering ("*" suffix) is waited for.
wait_nodes_idle() {
  local node state pending
  while :; do
    pending=()
    while read -r node state; do
      case $state in
        idle | mix | alloc | comp) ;;
        down | drain | drng | fail | inval)
          scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
          pending+=("$node:$state") ;;
        *) pending+=("$node:$state") ;;
      esac
    done < <(sinfo -h -N -p "$PARTITION" -o '%N %t')
    [ ${#pending[@]} -eq 0 ] && return
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
      echo "slurm-up.sh: nodes not ready: ${pending[*]}" >&2
      for node in "${NODES[@]}"; do show_log "slurmd-$node"; done
      show_log slurmctld
      exit 1
    fi
    sleep 0.2
  done
}

install_packages
# The timeout covers the daemons only: the first install alone can take minutes.
DEADLINE=$((SECONDS + ${SLURM_UP_TIMEOUT:-120}))
write_config
# A daemon that refuses to start explains itself in its log (daemon X logs to $LOG/X.log).
trap 'echo "slurm-up.sh: starting $daemon failed" >&2; show_log "$daemon"' ERR
for daemon in "${DAEMONS[@]}"; do
  running_pid "$daemon" >/dev/null && continue
  rm -f "$(pidfile "$daemon")"
  case $daemon in
    slurmd-*) start_slurmd "$daemon" ;;
    *) "start_$daemon" ;;
  esac
done
trap - ERR
wait_nodes_idle
wait_for sacct slurmdbd sacct -n -X -S now
echo "Slurm lab cluster up: partition $PARTITION, nodes ${NODES[*]} (8 CPUs, 2 fake GPUs each), in $LAB"
