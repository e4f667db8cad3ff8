"""Where the plugin gets the inpaintd client library.

Installed by `inpaintd install-krita`, the library sits inside the plugin as
`inpaintd_krita._vendor.protocol`, so no other plugin's `protocol` module can shadow it.
Run from a source checkout (tests, development), the project's own top-level `protocol`
package is used instead.  Importing fails when pyzmq or msgpack are missing from Krita's
Python; callers catch that and show `logic.MISSING_DEPENDENCY_HELP`.
"""

from __future__ import annotations

import os
import sys

# `pip install --target <plugin>/_vendor pyzmq msgpack` (the installer's advice where
# Krita's Python lacks them) puts the packages here: make them importable.
_VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor")
if os.path.isdir(os.path.join(_VENDOR, "zmq")) and _VENDOR not in sys.path:
    sys.path.append(_VENDOR)

try:
    from ._vendor.protocol import (  # type: ignore
        Client, Job, JobOptions, Layer, Message, ProtocolError, Type, resolve_endpoint,
    )
except ImportError as _vendor_error:  # not installed by the installer, or zmq/msgpack missing
    if "zmq" in str(_vendor_error) or "msgpack" in str(_vendor_error):
        raise
    from protocol import (  # type: ignore  # noqa: F401
        Client, Job, JobOptions, Layer, Message, ProtocolError, Type, resolve_endpoint,
    )
