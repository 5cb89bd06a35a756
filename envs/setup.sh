#!/usr/bin/env bash
# Create (or update) .venv with the pinned CPU environment. Idempotent and quick when nothing
# changed. Every install (uv, or pip) uses envs/constraints.txt, so nothing can pull another torch.
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
echo "setup: installing pinned packages into .venv (first time: a minute or two)"
pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c envs/constraints.txt \
    -r envs/requirements.txt -r envs/requirements-dev.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c envs/constraints.txt --no-deps -e .
}
# uv installs the same pinned set about 4x faster than pip (parallel downloads, unpacking and
# byte-compiling; docs/benchmarks.md). It is pinned in envs/constraints.txt and installed into
# .venv with pip. uv does not read pip's configuration, so pip's package sources (index,
# extra indexes, find-links, CA bundle; from PIP_* variables or pip.conf) are handed to it.
# STACKGAN_INSTALLER=pip uses pip alone; any uv failure falls back to pip.
pip_option() {  # value of pip option $2 in `pip config list` output $1: PIP_* variable first
  { printf '%s\n' "$1" | sed -n "s/^:env:\.$2='\(.*\)'$/\1/p"
    printf '%s\n' "$1" | sed -n "s/^[a-z]*\.$2='\(.*\)'$/\1/p" | tail -n 1; } | head -n 1
}
uv_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c envs/constraints.txt uv || return 1
  local listing index extra links cert
  listing=$(.venv/bin/python -m pip config list 2>/dev/null || true)
  index=$(pip_option "$listing" index-url); extra=$(pip_option "$listing" extra-index-url)
  links=$(pip_option "$listing" find-links); cert=$(pip_option "$listing" cert)
  (
    [ -n "$index" ] && export UV_DEFAULT_INDEX="${UV_DEFAULT_INDEX:-$index}"
    [ -n "$extra" ] && export UV_INDEX="${UV_INDEX:-$(echo $extra)}"
    [ -n "$links" ] && export UV_FIND_LINKS="${UV_FIND_LINKS:-$(echo $links | tr ' ' ,)}"
    [ -n "$cert" ] && export SSL_CERT_FILE="${SSL_CERT_FILE:-$cert}"
    export UV_INDEX_STRATEGY="${UV_INDEX_STRATEGY:-unsafe-best-match}"  # pip's rule across indexes
    .venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode \
      -c envs/constraints.txt -r envs/requirements.txt -r envs/requirements-dev.txt &&
      .venv/bin/uv pip install --quiet --python .venv/bin/python -c envs/constraints.txt --no-deps -e .
  )
}
if [ "${STACKGAN_INSTALLER:-uv}" = pip ]; then
  pip_install
elif ! uv_install; then
  echo "setup: uv could not install the packages (above); installing with pip instead"
  pip_install
fi
.venv/bin/python - <<'PY'
import torch, importlib.util
assert torch.__version__.split("+")[0] == "2.13.0", f"unexpected torch {torch.__version__}"
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
print(f"setup: torch {torch.__version__}, no torchvision")
PY
echo "$want" > "$stamp"
