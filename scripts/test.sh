#!/usr/bin/env bash
# Everything the tests need (venv, Krita, the GIMP 3 root), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/editors.sh || echo "test: editors could not be installed; the in-editor tests will say why they skip" >&2
exec .venv/bin/python -m pytest "$@"
