#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the exact, tested package set from requirements.lock.
# The lock is installed with --no-deps: it is complete, and it keeps a single OpenCV (`cv2`) package.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "error: Python 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>/dev/null \
  || .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
.venv/bin/python -c "import cv2, av, torch, diffusers, transformers, gradio; print('installed: torch', torch.__version__, '| diffusers', diffusers.__version__, '| gradio', gradio.__version__, '| opencv', cv2.__version__)"
