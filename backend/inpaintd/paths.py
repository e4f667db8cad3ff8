"""Where the daemon keeps what outlives it: the history and the user's styles.

One folder per user, the platform's own place for application data, overridable with
`$INPAINTD_DATA_DIR` or `serve --data-dir` (the tests give each daemon its own):

- Linux and other Unixes: `$XDG_DATA_HOME/inpaintd`, else `~/.local/share/inpaintd`;
- macOS: `~/Library/Application Support/inpaintd`;
- Windows: `%LOCALAPPDATA%\\inpaintd`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DATA_DIR_ENV = "INPAINTD_DATA_DIR"


def data_dir() -> Path:
    """The user's inpaintd data folder (not created here)."""
    given = os.environ.get(DATA_DIR_ENV)
    if given:
        return Path(given).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "inpaintd"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "inpaintd"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "inpaintd"
