#!/usr/bin/env bash
# Install the Debian packages for the local single-node SLURM cluster (see README.md).
#
# Idempotent: when every binary up.sh needs is already on PATH, apt is not touched at all.
# `apt-get update` runs only when apt does not know one of the packages yet.
# The packages' postinst scripts try to start daemons; on this kind of machine (no systemd,
# policy-rc.d exits 101) nothing starts by itself, and up.sh starts everything explicitly.
set -euo pipefail

packages=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server iproute2)
binaries=(munged munge unmunge mungekey slurmctld slurmd slurmdbd sbatch srun squeue scontrol sinfo
          scancel sacct sacctmgr mariadbd mariadb mariadb-admin ip unshare nsenter)

missing=()
for b in "${binaries[@]}"; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install.sh: all SLURM/munge/MariaDB binaries present, nothing to do"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: must run as root (missing: ${missing[*]})" >&2
  exit 1
fi

t0=$EPOCHREALTIME
echo "install.sh: missing ${missing[*]}; installing ${packages[*]}"
# Only refresh the package lists when apt has no candidate for one of the packages.
for p in "${packages[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [[ -z $cand || $cand == "(none)" ]]; then
    echo "install.sh: apt has no candidate for $p, running apt-get update"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    break
  fi
done
# DPkg::Lock::Timeout: wait for another engineer's apt run instead of failing at once.
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
  --no-install-recommends "${packages[@]}"
awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "install.sh: done in %.1f s\n", b - a }'
