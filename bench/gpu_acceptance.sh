#!/usr/bin/env bash
# GPU acceptance in one command, for a machine with CUDA GPUs (no network needed):
#   bash bench/gpu_acceptance.sh [--budget-s 480] [--out DIR]
# Uses $PYTHON, else .venv/bin/python, else python3 -- whichever has a CUDA build of torch
# and the project's requirements. Writes DIR/gpu_acceptance.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
for py in "${PYTHON:-}" .venv/bin/python python3; do
  [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
  if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_acceptance: $("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())')"
    exec "$py" bench/gpu_acceptance.py "$@"
  fi
done
echo "gpu_acceptance: no Python here has a CUDA build of torch with a visible GPU;" \
  "run 'python bench/gpu_acceptance.py --dry-run' to check the plumbing on CPU" >&2
exit 2
