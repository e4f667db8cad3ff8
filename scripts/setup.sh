#!/usr/bin/env bash
# Make .venv with inpaintd and its dependencies; quick no-op when it is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python 3.10-3.13 (set PYTHON=/path/to/python)" >&2; exit 1; }

stamp=.venv/.inpaintd-setup
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing inpaintd and its dependencies into .venv (first time: a few minutes)" >&2
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test,bench,ray]'
# opencv-contrib-python-headless replaced opencv-python-headless; both own cv2/, so drop the
# old one and lay the contrib files down again (uninstalling took the shared ones with it).
if .venv/bin/python -m pip show -q opencv-python-headless >/dev/null 2>&1; then
  contrib=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python-headless"))')
  .venv/bin/python -m pip uninstall -q -y opencv-python-headless
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "opencv-contrib-python-headless==$contrib"
fi
echo "$want" > "$stamp"
