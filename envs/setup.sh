#!/usr/bin/env bash
# Create (or update) .venv with the pinned CPU environment. Idempotent and quick when nothing
# changed. Every pip call uses envs/constraints.txt, so no dependency can pull another torch.
#   bash envs/setup.sh            # PYTHON=python3.11 bash envs/setup.sh to pick an interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.stackgan-setup
want=$(cat envs/constraints.txt envs/requirements.txt envs/requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
echo "setup: installing pinned packages into .venv (first time: a few minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c envs/constraints.txt -r envs/requirements.txt -r envs/requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c envs/constraints.txt --no-deps -e .
.venv/bin/python - <<'PY'
import torch, importlib.util
assert torch.__version__.split("+")[0] == "2.13.0", f"unexpected torch {torch.__version__}"
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
print(f"setup: torch {torch.__version__}, no torchvision")
PY
echo "$want" > "$stamp"
