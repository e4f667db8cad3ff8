#!/usr/bin/env bash
# The main job: set up, start the daemon, inpaint the bundled photo, write the variants to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/inpaintd demo "$@"
