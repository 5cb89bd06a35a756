#!/usr/bin/env bash
# Stop the daemons that up.sh started (and only those), by PID from their PID files, and remove
# the node namespaces and bridge of `up.sh --nodes N`.
#   down.sh           stop recorded daemons; keep state, configs and the accounting DB
#   down.sh --purge   also drop the slurm DB/user (only if up.sh created them), delete the base
#                     directory and the config files up.sh wrote
# A munged or MariaDB that was already running before up.sh is never touched. Never by name.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$HERE/common.sh"

purge=0
case ${1:-} in
  "") ;;
  --purge) purge=1 ;;
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  *) die "usage: $0 [--purge]" ;;
esac
[[ $(id -u) -eq 0 ]] || die "must run as root"

take_lock "$@"
T_START=$EPOCHREALTIME

# Jobs survive a slurmd/slurmctld restart (their slurmstepd keeps running), so a plain stop leaves
# them alone. --purge deletes the spool and state they live in: cancel them first.
if is_recorded slurmctld && live_pid slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %A 2>/dev/null | paste -sd' ' - || true)
  if [[ -n $jobs ]] && ((purge)); then
    log "cancelling jobs $jobs"
    # shellcheck disable=SC2086  # one argument per job id
    timeout 10 scancel $jobs || true
    for ((i = 0; i < 150; i++)); do
      [[ -z $(timeout 10 squeue -h -t RUNNING,COMPLETING,SUSPENDED -o %A 2>/dev/null || true) ]] && break
      sleep 0.1
    done
  elif [[ -n $jobs ]]; then
    log "WARNING: jobs $jobs are still queued/running; their processes keep running until up.sh restarts the cluster"
  fi
fi

if [[ ! -d $BASE ]]; then
  log "no base directory $BASE: nothing was started by up.sh"
else
  [[ -f $STARTED ]] || touch "$STARTED"
  for name in $(recorded_like slurmd@) slurmd slurmctld slurmdbd mariadbd munged; do
    if ! is_recorded "$name"; then
      live_pid "$name" >/dev/null && log "$name: running but not started by up.sh, left alone"
      continue
    fi
    if ((purge)) && [[ $name == mariadbd ]]; then
      : # stopped below, after the DB objects are dropped
    else
      stop_daemon "$name"
      unrecord "$name"
    fi
  done
fi

net_down

if ((purge)); then
  # Drop what we created while MariaDB is still up (slurmdbd is already stopped, so no open
  # connection holds locks on the accounting tables).
  if [[ -f $CREATED ]] && [[ -s $CREATED ]]; then
    if mysql_up; then
      if grep -qx database "$CREATED"; then
        mariadb -e "DROP DATABASE IF EXISTS \`$DB_NAME\`" && log "mariadb: dropped database $DB_NAME"
      fi
      if grep -qx db-user "$CREATED"; then
        mariadb -e "DROP USER IF EXISTS '$DB_USER'@'localhost'" && log "mariadb: dropped user $DB_USER@localhost"
      fi
    else
      log "WARNING: MariaDB is not running; database $DB_NAME / user $DB_USER were not dropped"
    fi
  fi
  if [[ -d $BASE ]] && is_recorded mariadbd; then
    stop_daemon mariadbd
    unrecord mariadbd
  fi
  for f in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -f $CONF_DIR/$f && $(head -n 1 "$CONF_DIR/$f") == "$MARKER"* ]]; then
      rm -f "$CONF_DIR/$f"
      log "removed $CONF_DIR/$f"
    fi
  done
  # Fake GPU nodes, state, spool, logs, PID files, records.
  rm -rf -- "$BASE"
  log "removed $BASE"
fi
log "down in $(since "$T_START") s"
