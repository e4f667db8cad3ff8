"""The client library's names the plugin uses, imported in one place.

`inpaintd_protocol` is the vendored copy installed with the plugin (the package's
`__init__` puts `_vendor/` first on the path) or, in a source checkout, the project's own.
Importing fails when pyzmq or msgpack are missing from Krita's Python; callers catch that
and show `logic.MISSING_DEPENDENCY_HELP`.
"""

from __future__ import annotations

from inpaintd_protocol import Client, Job, JobOptions, Layer, Message, ProtocolError, Type, resolve_endpoint

__all__ = ["Client", "Job", "JobOptions", "Layer", "Message", "ProtocolError", "Type", "resolve_endpoint"]
