"""The code that runs inside the editors must stay valid for their Pythons: Krita 5 ships
3.10/3.11, GIMP 3 3.12/3.13.  3.11 and 3.13 run it for real (the in-editor tests); this
catches newer syntax creeping in for the oldest one, which no machine here can run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDITOR_SIDE = sorted(
    [*ROOT.joinpath("protocol", "inpaintd_protocol").glob("*.py"), *ROOT.joinpath("krita_plugin").rglob("*.py"),
     *ROOT.joinpath("gimp_plugin").rglob("*.py")]
)


@pytest.mark.parametrize("path", EDITOR_SIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_parses_with_the_python_3_10_grammar(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_no_standard_library_names_newer_than_3_10() -> None:
    newer = ("tomllib", "ExceptionGroup", "except*", "StrEnum", "datetime.UTC", "typing.Self", "from typing import Self")
    found = [(p.name, n) for p in EDITOR_SIDE for n in newer if n in p.read_text(encoding="utf-8")]
    assert not found, found
