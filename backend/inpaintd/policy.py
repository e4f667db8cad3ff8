"""What the daemon agrees to open: the one statement of the pickle rule.

Pickle checkpoints (`.ckpt`, `.bin`, `.pt`, `.pth`) run code when loaded, so they are
refused unless the daemon was started with `--allow-pickle`.  The registry applies this to
every model it lists and loads (`ModelRegistry.admit`), the engine once more when it opens
files, and both word the refusal the same way.  Which models may be named at all (the
allow-list) is the registry's: only those the daemon was started with.
"""

from __future__ import annotations

from pathlib import Path

#: Checkpoint formats that unpickle on load, and so can run code hidden in the file.
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)


def is_pickle(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_refusal(path: str | Path) -> str:
    return (
        f"{path}: refused, pickle checkpoints can run code when loaded; convert it to "
        ".safetensors or start the daemon with --allow-pickle"
    )
