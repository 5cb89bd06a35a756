#!/usr/bin/env bash
# The test command: set up .venv, bring up the local single-node SLURM cluster and install
# headless Chromium (Debian packages; needs root), then run the whole test suite. Extra
# arguments go to pytest.
#   bash tests/run.sh                 # everything (what CI runs through .ci/run)
#   bash tests/run.sh -m "not slurm"  # without the SLURM tests
set -euo pipefail
cd "$(dirname "$0")/.."
bash envs/setup.sh
if [ "$(id -u)" = 0 ]; then
  bash cluster/local-slurm/install.sh
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    # Debian's browser + driver for the headless-browser tests (selenium never downloads one)
    echo "tests/run.sh: installing chromium and chromium-driver (apt-get)"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      chromium chromium-driver >/dev/null
  fi
  bash cluster/local-slurm/up.sh
elif [ "${CI:-}" = true ]; then
  echo "tests/run.sh: CI=true but not root: the SLURM cluster cannot be installed" >&2
  exit 1
else
  echo "tests/run.sh: not root, so no local SLURM cluster; SLURM tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
