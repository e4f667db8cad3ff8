"""Entry point for `kritarunner -s run_in_krita -f main`: run pytest inside Krita.

kritarunner exits 0 whatever happens, so the exit code is forced with os._exit; the
arguments for pytest come from INPAINTD_KRITA_PYTEST_ARGS (space-separated).
"""

from __future__ import annotations

import os
import sys
import traceback


def main(*_args: object) -> None:
    rc = 99
    try:
        import pytest

        here = os.path.dirname(os.path.abspath(__file__))
        extra = os.environ.get("INPAINTD_KRITA_PYTEST_ARGS", "").split()
        rc = int(pytest.main([os.path.join(here, "test_in_krita.py"), "-q", "-p", "no:cacheprovider",
                              "--rootdir", here, "--confcutdir", here, *extra]))
    except BaseException:  # noqa: BLE001 - whatever it is, it must turn into an exit code
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
