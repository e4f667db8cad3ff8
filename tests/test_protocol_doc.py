"""PROTOCOL.md and protocol/inpaintd_protocol/messages.py must not drift apart silently.

Every message type, error code, stage, option (with its default and bounds), limit and
scheduler that the code defines must be named in the specification, in backticks, so a
new name added to the code without documentation fails here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inpaintd_protocol import messages  # noqa: E402
from inpaintd_protocol.messages import LIMITS, OPTION_RULES, SCHEDULERS, Code, JobOptions, Stage, Type  # noqa: E402

DOC = (ROOT / "protocol" / "PROTOCOL.md").read_text(encoding="utf-8")


def _constants(cls: type) -> dict[str, str]:
    return {k: v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


@pytest.mark.parametrize("name,value", sorted(_constants(Type).items()))
def test_message_type_documented(name: str, value: str) -> None:
    assert f"`{value}`" in DOC, f"message type Type.{name} = {value!r} is not in PROTOCOL.md"
    # and it has a section heading or a table row of its own
    assert re.search(rf"^(#+ .*`{re.escape(value)}`|\| `{re.escape(value)}` \|)", DOC, re.M), value


@pytest.mark.parametrize("name,value", sorted(_constants(Code).items()))
def test_error_code_documented(name: str, value: str) -> None:
    assert re.search(rf"^\| `{re.escape(value)}` \|", DOC, re.M), (
        f"error code Code.{name} = {value!r} has no row in the error table of PROTOCOL.md"
    )


@pytest.mark.parametrize("name,value", sorted(_constants(Stage).items()))
def test_stage_documented(name: str, value: str) -> None:
    assert re.search(rf"^\| `{re.escape(value)}` \|", DOC, re.M), f"stage {value!r} has no row in PROTOCOL.md"


def _fmt(value: object) -> str:
    if isinstance(value, bool):  # msgpack's spelling, as any client language sees it
        return "true" if value else "false"
    return f'`"{value}"`' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("option", list(OPTION_RULES))
def test_option_documented_with_default_and_bounds(option: str) -> None:
    rows = [line for line in DOC.splitlines() if line.startswith(f"| `{option}` |")]
    assert rows, f"option {option!r} has no row in the submit options table of PROTOCOL.md"
    row = rows[0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    default = getattr(JobOptions(), option)
    assert cells[2] == _fmt(default), f"{option}: PROTOCOL.md says default {cells[2]}, code says {default!r}"
    _types, low, high = OPTION_RULES[option]
    for bound in (low, high):
        if bound is not None:
            assert str(bound) in cells[3], f"{option}: bound {bound} missing from range cell {cells[3]!r}"


def test_every_option_row_is_an_option() -> None:
    """The options table documents nothing the daemon does not accept."""
    start = DOC.index("| option | type | default | range | meaning |")
    table = DOC[start:].split("\n\n", 1)[0].splitlines()[2:]
    names = [re.match(r"\| `([a-z_]+)` \|", line).group(1) for line in table]
    assert names == list(OPTION_RULES)


@pytest.mark.parametrize("name", list(LIMITS.to_wire()))
def test_limit_documented(name: str) -> None:
    value = getattr(LIMITS, name)
    assert re.search(rf"^\| `{name}` \| {value} \|", DOC, re.M), f"limit {name} = {value} has no row in PROTOCOL.md"


def test_schedulers_documented() -> None:
    listed = set(re.findall(r"`([a-z0-9_]+)`", DOC.split("| `scheduler` |", 1)[1].split("\n", 1)[0]))
    assert set(SCHEDULERS) <= listed
    assert listed - {"scheduler", "default", "SCHEDULERS"} <= set(SCHEDULERS), "PROTOCOL.md lists a scheduler the code does not have"


def test_constants_documented() -> None:
    assert f"version {messages.PROTOCOL_VERSION}" in DOC
    assert f"`{messages.DEFAULT_ENDPOINT}`" in DOC
    assert f"`{messages.ENDPOINT_ENV}`" in DOC
    from inpaintd_protocol.connection import CONNECTION_DIR_ENV

    assert f"`{CONNECTION_DIR_ENV}`" in DOC and "`INPAINTD_KEY`" in DOC


def test_daemon_constants_documented() -> None:
    from inpaintd import daemon, jobs

    assert f"{daemon.REPLAY_WINDOW:.0f} s" in DOC or f"{daemon.REPLAY_WINDOW:.0f} seconds" in DOC
    assert f"`LOADING_TICK`, {daemon.LOADING_TICK:.0f} s" in DOC
    for cap in daemon.CAPABILITIES:
        assert f"`{cap}`" in DOC, f"capability {cap!r} missing"
    store = jobs.ResultStore()
    assert f"{store.ttl:.0f} s" in DOC and f"{store.max_items} most recent" in DOC


def test_contents_list_matches_the_sections() -> None:
    """The contents list names every top-level section, in order, with its heading's title."""
    listed = re.findall(r"^(\d+)\. (.+)$", DOC.split("\nContents\n", 1)[1].split("\n---", 1)[0], re.M)
    headings = re.findall(r"^## (\d+)\. (.+)$", DOC, re.M)
    assert listed == headings


@pytest.mark.parametrize("code", sorted(_constants(messages.CancelCode).values()))
def test_cancel_code_documented_with_the_reason_the_daemon_sends(code: str) -> None:
    """Section 6.3's table: each code, and beside it the exact `reason` text the daemon sends."""
    reason = messages.CANCEL_REASONS[code]
    assert re.search(rf'^\| `{re.escape(code)}` \| .* \| `"{re.escape(reason)}"` \|$', DOC, re.M), (
        f"cancel code {code!r} (reason {reason!r}) has no row in PROTOCOL.md section 6.3"
    )


def test_no_other_cancel_reason_is_promised() -> None:
    """Every quoted reason the document gives a `cancelled` event is one the daemon sends."""
    quoted = set(re.findall(r'reason: "([^"]+)"', DOC)) | set(re.findall(r'reason `"([^"]+)"`', DOC))
    assert quoted <= set(messages.CANCEL_REASONS.values()), quoted - set(messages.CANCEL_REASONS.values())


def _section(heading: str) -> str:
    """The text of the section whose heading starts with `heading`, up to the next heading."""
    start = DOC.index(f"\n{heading}")
    level = heading.split(" ", 1)[0]
    rest = DOC[start + 1:]
    ends = [m.start() for m in re.finditer(rf"^#{{2,{len(level)}}} ", rest, re.M) if m.start() > 0]
    return rest[: ends[0]] if ends else rest


def test_endpoint_rule_names_every_source_in_order() -> None:
    """Section 1: explicit, INPAINTD_ENDPOINT, the connection file's endpoint, the default,
    empty values counting as unset, and the daemon's --bind following the same steps."""
    from inpaintd_protocol.connection import CONNECTION_FILE_ENV

    text = _section("## 1. Transport")
    steps = re.findall(r"^(\d)\. (.+?)(?=^\d\. |^\n)", text.split("**Endpoint resolution.**", 1)[1], re.M | re.S)
    assert [n for n, _ in steps] == ["1", "2", "3", "4"], steps
    explicit, env, file, default = (body for _, body in steps)
    assert "explicit" in explicit and "empty" in explicit
    assert f"`{messages.ENDPOINT_ENV}`" in env and "empty" in env
    assert f"`{CONNECTION_FILE_ENV}`" in file and "`endpoint`" in file and "non-empty" in file
    assert f"`{messages.DEFAULT_ENDPOINT}`" in default
    assert "`--bind`" in text and "65535" in text


def test_endpoint_rule_is_what_the_code_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from inpaintd_protocol.connection import CONNECTION_FILE_ENV, resolve_endpoint

    conn = tmp_path / "connection.json"
    conn.write_text('{"endpoint": "tcp://10.0.0.3:3"}')
    monkeypatch.setenv(CONNECTION_FILE_ENV, str(conn))
    monkeypatch.setenv(messages.ENDPOINT_ENV, "tcp://10.0.0.2:2")
    assert resolve_endpoint("tcp://10.0.0.1:1") == "tcp://10.0.0.1:1"  # 1
    assert resolve_endpoint("") == resolve_endpoint() == "tcp://10.0.0.2:2"  # 2: an empty explicit one is none
    monkeypatch.setenv(messages.ENDPOINT_ENV, "")
    assert resolve_endpoint() == "tcp://10.0.0.3:3"  # 3: an empty variable is unset
    conn.write_text("{not json")
    assert resolve_endpoint() == messages.DEFAULT_ENDPOINT  # 3 gives nothing, silently; 4
    monkeypatch.setenv(CONNECTION_FILE_ENV, "")
    assert resolve_endpoint() == messages.DEFAULT_ENDPOINT


def test_runtime_folder_rules_documented() -> None:
    """Section 3.2: every source of the folder, empty variables, that clients use the same
    rule from their own environment, and that the daemon tightens an existing folder."""
    from inpaintd_protocol.connection import CONNECTION_DIR_ENV

    text = _section("### 3.2 Connection files")
    rows = [line for line in text.splitlines() if line.startswith("| `") or line.startswith("| Windows") or line.startswith("| otherwise")]
    assert [r.split("|")[1].strip() for r in rows[:4]] == [
        f"`{CONNECTION_DIR_ENV}` is set", "Windows", "`XDG_RUNTIME_DIR` is set", "otherwise"]
    assert "`%APPDATA%\\inpaintd`" in rows[1] and "`APPDATA` is unset" in rows[1]
    assert "`~/.config/inpaintd/run`" in rows[3]
    assert "set but empty counts as unset" in text
    assert "Clients work out the same folder" in text
    assert "`0700`" in text and "also a folder that already existed" in text
    assert "`0600`" in text and ".tmp" in text


def test_native_size_nil_is_told_apart_by_engine() -> None:
    """Section 5.3: nil is the crop's own resolution for a classical model, unknown for a
    diffusion model whose configuration is not here."""
    row = next(line for line in DOC.splitlines() if line.startswith("| `native_size` |"))
    assert "`classical`" in row and "crop's own resolution" in row
    assert "`diffusers`" in row and "not known yet" in row
