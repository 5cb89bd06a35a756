#!/usr/bin/env bash
# The test command: set up .venv, bring up the local single-node SLURM cluster (Debian
# packages; needs root), then run the whole test suite. Extra arguments go to pytest.
#   bash tests/run.sh                 # everything (what CI runs through .ci/run)
#   bash tests/run.sh -m "not slurm"  # without the SLURM tests
set -euo pipefail
cd "$(dirname "$0")/.."
bash envs/setup.sh
if [ "$(id -u)" = 0 ]; then
  bash cluster/local-slurm/install.sh
  bash cluster/local-slurm/up.sh
elif [ "${CI:-}" = true ]; then
  echo "tests/run.sh: CI=true but not root: the SLURM cluster cannot be installed" >&2
  exit 1
else
  echo "tests/run.sh: not root, so no local SLURM cluster; SLURM tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
