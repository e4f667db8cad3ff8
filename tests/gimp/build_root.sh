#!/bin/sh
# Build (once) a Debian trixie root holding GIMP 3 with its Python, so the GIMP plug-in
# can be tested inside the real GIMP on a Debian 12 host whose own GIMP is 2.10.
#
# Usage: tests/gimp/build_root.sh [ROOT]
#   ROOT defaults to $INPAINTD_GIMP_ROOT, else /var/cache/inpaintd-gimp-root.
# Reuses ROOT when its stamp says it is complete; builds into ROOT.partial and renames,
# so an interrupted build is never mistaken for a finished one.
# Needs: mmdebstrap and root privileges (mode=root), the Debian mirror that apt uses.
# Exit codes: 0 ready, 3 cannot build here (missing tool/privilege), 4 build failed.
set -eu

ROOT=${1:-${INPAINTD_GIMP_ROOT:-/var/cache/inpaintd-gimp-root}}
STAMP_VERSION=3
# gimp + its Python (gi, typelibs) + what the plug-in and the in-GIMP tests import;
# xvfb/xauth/x11-apps/xdotool serve the dialog screenshot and the undo check in the real UI.
PACKAGES=gimp,python3-gi,gir1.2-gimp-3.0,python3-pytest,python3-zmq,python3-msgpack,python3-pil,xvfb,xauth,x11-apps,xdotool

if [ -f "$ROOT/.inpaintd-root-ready" ] && [ "$(cat "$ROOT/.inpaintd-root-ready")" = "$STAMP_VERSION" ]; then
    echo "GIMP root ready at $ROOT"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "cannot build the GIMP root: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2
    exit 3
fi
if [ "$(id -u)" != 0 ]; then
    echo "cannot build the GIMP root: mmdebstrap --mode=root needs root privileges" >&2
    exit 3
fi

# The mirror apt already uses (deb822 first, then one-line sources), else Debian's CDN.
MIRROR=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources \
             | grep -v security | head -n1 || true)
fi
if [ -z "$MIRROR" ] && [ -f /etc/apt/sources.list ]; then
    MIRROR=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}

PARTIAL="$ROOT.partial"
rm -rf "$PARTIAL"
mkdir -p "$(dirname "$ROOT")"
echo "building GIMP root at $ROOT from $MIRROR (about a minute)..."
if ! mmdebstrap --variant=apt --mode=root --aptopt='APT::Install-Recommends "false"' \
        --include="$PACKAGES" trixie "$PARTIAL" "$MIRROR"; then
    rm -rf "$PARTIAL"
    echo "mmdebstrap failed (is $MIRROR reachable?)" >&2
    exit 4
fi
echo "$STAMP_VERSION" > "$PARTIAL/.inpaintd-root-ready"
rm -rf "$ROOT"
mv "$PARTIAL" "$ROOT"
echo "GIMP root ready at $ROOT"
