"""CONTRIBUTING.md's map stays true: every `file.py:name` hop it names exists.

A newcomer follows those hops from the editor to the GPU and back; a renamed function
must fail a test, not leave the map pointing nowhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("backend", "protocol", "krita_plugin", "gimp_plugin")
HOP = re.compile(r"`([A-Za-z0-9_/]+\.py):([A-Za-z_][A-Za-z0-9_.]*)`")


def _resolve(path: str) -> Path:
    """A path as the map writes it: from the root, or the shortest unique ending."""
    if (ROOT / path).is_file():
        return ROOT / path
    found = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if p.as_posix().endswith("/" + path)]
    assert len(found) == 1, f"CONTRIBUTING.md names {path!r}: found {[str(p.relative_to(ROOT)) for p in found]}"
    return found[0]


def _defined(tree: ast.Module, dotted: str) -> bool:
    scope: list[ast.stmt] = list(tree.body)
    for part in dotted.split("."):
        match = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                match = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    match = node
        if match is None:
            return False
        scope = list(match.body) if isinstance(match, ast.ClassDef) else []
    return True


def test_every_hop_in_the_map_exists() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    hops = HOP.findall(text)
    assert len(hops) >= 25, "the map lost its hops"
    missing = []
    for path, name in hops:
        source = _resolve(path)
        if not _defined(ast.parse(source.read_text(encoding="utf-8")), name):
            missing.append(f"{path}:{name}")
    assert not missing, f"CONTRIBUTING.md names what the code no longer has: {missing}"


def test_the_checker_would_notice_a_rename() -> None:
    tree = ast.parse("class A:\n    def b(self): ...\nC = 1\n")
    assert _defined(tree, "A.b") and _defined(tree, "C")
    assert not _defined(tree, "A.c") and not _defined(tree, "D")
