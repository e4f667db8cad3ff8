#!/usr/bin/env bash
# Install what the in-editor tests run: Debian's Krita 5 (with its Python's zmq and msgpack)
# and mmdebstrap, which the GIMP tests use to build their Debian trixie GIMP 3 root.
set -euo pipefail
need=()
command -v kritarunner >/dev/null 2>&1 || need+=(krita)
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# Krita embeds the system Python (/usr/bin/python3), not whichever python3 is first on PATH
# (pyenv, a venv): ask that one, or every run would reinstall and re-download the lists.
/usr/bin/python3 -c 'import zmq, msgpack' >/dev/null 2>&1 || need+=(python3-zmq python3-msgpack)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "editors: missing ${need[*]}; install them with apt-get as root to run the in-editor tests" >&2
  exit 1
fi
echo "editors: installing ${need[*]} (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${need[@]}" python3-pil python3-numpy >/dev/null
