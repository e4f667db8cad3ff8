"""Unit tests for inpaintd_protocol.wire, inpaintd_protocol.connection and inpaintd_protocol.messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from inpaintd_protocol import connection
from inpaintd_protocol.connection import (
    connection_file,
    find_key,
    new_key,
    read_connection_file,
    resolve_endpoint,
    runtime_dir,
    write_connection_file,
)
from inpaintd_protocol.messages import (
    DEFAULT_ENDPOINT,
    LIMITS,
    OPTION_RULES,
    PROTOCOL_VERSION,
    Code,
    ImageDesc,
    JobOptions,
    ProtocolError,
)
from inpaintd_protocol.wire import Message, decode, encode, error_message, sign

ROOT = Path(__file__).resolve().parent.parent
KEY = b"0123456789abcdef" * 4


def frames_with_header(header, buffers=(), key=None):
    raw = msgpack.packb(header, use_bin_type=True)
    return [raw, *buffers, sign(key, raw)]


def good_header(**over):
    h = {"v": 1, "id": "abc", "type": "ping", "ts": 1.5, "body": {}, "buffers": []}
    h.update(over)
    return h


def decode_error(frames, key=None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames, key)
    return info.value


# --- round trip --------------------------------------------------------------------------


def test_round_trip_no_buffers():
    msg = Message(type="ping", body={"a": 1, "s": "x", "l": [1, 2]}, job="j1", re="r1")
    out = decode(encode(msg))
    assert (out.type, out.body, out.job, out.re, out.id, out.version) == ("ping", msg.body, "j1", "r1", msg.id, PROTOCOL_VERSION)
    assert out.ts == pytest.approx(msg.ts)
    assert out.buffers == []


def test_round_trip_with_buffers_and_key():
    bufs = [b"\x00\x01\x02", bytearray(b"hello world"), memoryview(b"")]
    msg = Message(type="submit", body={"k": "v"}, buffers=bufs)
    frames = encode(msg, KEY)
    assert len(frames) == 2 + len(bufs)
    out = decode(frames, KEY)
    assert [bytes(b) for b in out.buffers] == [b"\x00\x01\x02", b"hello world", b""]
    assert out.body == {"k": "v"}


def test_encode_frames_layout():
    msg = Message(type="ping", buffers=[b"abc"])
    frames = encode(msg)
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["buffers"] == [3]
    assert header["type"] == "ping" and header["v"] == PROTOCOL_VERSION
    assert "job" not in header and "re" not in header
    assert frames[1] is msg.buffers[0]  # buffers travel as they are, not copied
    assert frames[-1] == b""  # unsigned without a key


def test_header_counts_bytes_of_multibyte_buffers():
    import array

    buf = memoryview(array.array("i", [1, 2, 3]))  # 12 bytes, itemsize 4
    msg = Message(type="x", buffers=[buf])
    assert msg.header()["buffers"] == [12]
    out = decode(encode(msg))
    assert len(out.buffers[0]) == 12


def test_decoded_buffer_is_zero_copy_view():
    backing = bytearray(b"pixels!!")
    frames = encode(Message(type="submit", buffers=[backing]))
    out = decode(frames)
    view = out.buffers[0]
    assert isinstance(view, memoryview)
    backing[0:1] = b"P"  # same memory: the change shows through the view
    assert bytes(view) == b"Pixels!!"


def test_decode_accepts_zmq_frame_like_objects():
    class FrameLike:
        def __init__(self, data):
            self.buffer = memoryview(data)

    raw = encode(Message(type="ping", buffers=[b"xyz"]), KEY)
    out = decode([FrameLike(bytes(f)) for f in raw], KEY)
    assert bytes(out.buffers[0]) == b"xyz"


def test_message_buffer_indexing_from_one():
    msg = Message(type="x", buffers=[b"a", b"bb"])
    assert bytes(msg.buffer(1)) == b"a" and bytes(msg.buffer(2)) == b"bb"
    for bad in (0, 3, -1):
        with pytest.raises(ProtocolError) as info:
            msg.buffer(bad)
        assert info.value.code == Code.BAD_IMAGE


def test_ids_unique():
    assert len({Message(type="x").id for _ in range(100)}) == 100


def test_version_returned_as_sent():
    out = decode(frames_with_header(good_header(v=99)))
    assert out.version == 99


def test_missing_optional_fields_defaults():
    out = decode(frames_with_header({"v": 1, "id": "i", "type": "t"}))
    assert out.body == {} and out.buffers == [] and out.ts == 0.0 and out.job is None and out.re is None


@pytest.mark.parametrize("name,value", [("job", 5), ("re", ["x"]), ("job", None), ("re", b"r")])
def test_non_string_job_and_re_rejected(name, value):
    err = decode_error(frames_with_header(good_header(**{name: value})))
    assert err.code == Code.BAD_FIELD_TYPE and err.details["field"] == name


@pytest.mark.parametrize("ts", ["yesterday", True, None, float("nan")])
def test_bad_ts_rejected(ts):
    err = decode_error(frames_with_header(good_header(ts=ts)))
    assert err.code == Code.BAD_FIELD_TYPE and err.details["field"] == "ts"


def test_integer_ts_accepted_as_float():
    out = decode(frames_with_header(good_header(ts=7)))
    assert out.ts == 7.0 and isinstance(out.ts, float)


def test_oversized_header_rejected_before_unpacking():
    from inpaintd_protocol import wire

    huge = b"\xc1" * (wire.MAX_HEADER_BYTES + 1)  # not even msgpack: size is checked first
    err = decode_error([huge, b""])
    assert err.code == Code.TOO_LARGE


# --- signatures --------------------------------------------------------------------------


def test_sign_without_key_is_empty():
    assert sign(None, b"h") == b"" and sign(b"", b"h") == b""


def test_sign_is_hex_hmac_sha256():
    import hashlib
    import hmac

    assert sign(KEY, b"hdr") == hmac.new(KEY, b"hdr", hashlib.sha256).hexdigest().encode()


def test_signature_required_when_key_set():
    frames = encode(Message(type="ping"))  # unsigned
    assert decode_error(frames, KEY).code == Code.BAD_SIGNATURE


def test_wrong_key_is_bad_signature():
    frames = encode(Message(type="ping", id="m1"), b"other-key")
    err = decode_error(frames, KEY)
    assert err.code == Code.BAD_SIGNATURE
    assert err.details.get("re") == "m1"


def test_tampered_header_is_bad_signature():
    frames = encode(Message(type="ping", body={"n": 1}), KEY)
    tampered = msgpack.packb({**msgpack.unpackb(frames[0]), "type": "shutdown"})
    assert decode_error([tampered, *frames[1:]], KEY).code == Code.BAD_SIGNATURE


def test_signature_from_another_message_rejected():
    f1 = encode(Message(type="ping"), KEY)
    f2 = encode(Message(type="shutdown"), KEY)
    assert decode_error([f2[0], f1[-1]], KEY).code == Code.BAD_SIGNATURE


def test_signed_message_accepted_without_key():
    out = decode(encode(Message(type="ping"), KEY))
    assert out.type == "ping"


def test_signature_checked_before_header_fields():
    # a wrongly signed message must say so, not leak which field it lacks
    frames = frames_with_header({"v": 1}, key=b"wrong")
    assert decode_error(frames, KEY).code == Code.BAD_SIGNATURE


# --- malformed frames --------------------------------------------------------------------


@pytest.mark.parametrize("frames", [[], [b"only-one"]])
def test_too_few_frames(frames):
    assert decode_error(frames).code == Code.BAD_FRAME


def test_truncated_header_is_bad_frame():
    raw = encode(Message(type="ping", body={"x": "y" * 50}))
    assert decode_error([raw[0][:-10], raw[-1]]).code == Code.BAD_FRAME


def test_trailing_garbage_after_header_is_bad_frame():
    raw = encode(Message(type="ping"))
    assert decode_error([bytes(raw[0]) + b"\x00", raw[-1]]).code == Code.BAD_FRAME


def test_garbage_header_is_bad_frame():
    assert decode_error([b"\xc1\xc1\xc1", b""]).code == Code.BAD_FRAME


@pytest.mark.parametrize("value", [[1, 2], "str", 5, None])
def test_non_map_header_is_bad_frame(value):
    assert decode_error([msgpack.packb(value), b""]).code == Code.BAD_FRAME


def test_non_string_map_keys_are_bad_frame():
    assert decode_error([msgpack.packb({1: 2}), b""]).code == Code.BAD_FRAME


@pytest.mark.parametrize("name", ["v", "id", "type"])
def test_missing_header_field(name):
    h = good_header()
    del h[name]
    err = decode_error(frames_with_header(h))
    assert err.code == Code.MISSING_FIELD and err.details["field"] == name


@pytest.mark.parametrize(
    "name,value",
    [("v", "1"), ("v", 1.0), ("v", True), ("id", 5), ("id", None), ("type", b"ping"), ("type", 3)],
)
def test_wrong_header_field_types(name, value):
    err = decode_error(frames_with_header(good_header(**{name: value})))
    assert err.code == Code.BAD_FIELD_TYPE and err.details["field"] == name
    assert name in err.message


@pytest.mark.parametrize("body", [[], "x", 3])
def test_body_not_a_map(body):
    assert decode_error(frames_with_header(good_header(body=body))).code == Code.BAD_FIELD_TYPE


@pytest.mark.parametrize("lengths", ["3", [1.5], [True], 3, [None]])
def test_buffers_field_wrong_type(lengths):
    err = decode_error(frames_with_header(good_header(buffers=lengths), [b"abc"]))
    assert err.code == Code.BAD_FIELD_TYPE


def test_more_buffers_than_declared():
    err = decode_error(frames_with_header(good_header(buffers=[3]), [b"abc", b"def"]))
    assert err.code == Code.BAD_FRAME and err.details["re"] == "abc"


def test_fewer_buffers_than_declared():
    assert decode_error(frames_with_header(good_header(buffers=[3, 3]), [b"abc"])).code == Code.BAD_FRAME


def test_buffer_length_mismatch():
    err = decode_error(frames_with_header(good_header(buffers=[4]), [b"abc"]))
    assert err.code == Code.BAD_FRAME
    assert "3" in err.message and "4" in err.message


def test_buffer_swapped_for_other_size_rejected_even_when_signed():
    frames = encode(Message(type="submit", buffers=[b"a" * 10]), KEY)
    frames[1] = b"a" * 11
    assert decode_error(frames, KEY).code == Code.BAD_FRAME


def test_error_message_builder():
    m = error_message(Code.BAD_VALUE, "nope", re="r", job="j", field="steps")
    assert m.type == "error" and m.re == "r" and m.job == "j"
    assert m.body == {"code": "bad_value", "message": "nope", "job": "j", "details": {"field": "steps"}}
    assert "details" not in error_message(Code.INTERNAL, "x").body


# --- messages ----------------------------------------------------------------------------


def test_protocol_error_str():
    assert str(ProtocolError("bad_value", "too big")) == "bad_value: too big"


def test_image_desc_default_stride_and_nbytes():
    d = ImageDesc(frame=1, width=10, height=3, channels=4)
    assert d.stride == 40 and d.nbytes == 120
    assert ImageDesc(frame=1, width=10, height=3, channels=3, stride=32).nbytes == 96
    assert d.to_wire() == {"frame": 1, "width": 10, "height": 3, "channels": 4, "stride": 40}


def test_job_options_wire_round_trip_through_msgpack():
    opts = JobOptions(prompt="p", seed=5)
    assert msgpack.unpackb(msgpack.packb(opts.to_wire()), raw=False) == opts.to_wire()
    assert set(opts.to_wire()) == set(OPTION_RULES)


def test_limits_to_wire():
    w = LIMITS.to_wire()
    assert w["max_side"] == LIMITS.max_side and all(isinstance(v, int) for v in w.values())


def test_option_defaults_within_their_rules():
    opts = JobOptions()
    for name, (types, low, high) in OPTION_RULES.items():
        v = getattr(opts, name)
        assert isinstance(v, types)
        assert low is None or v >= low
        assert high is None or v <= high


# --- connection: endpoints ---------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("INPAINTD_ENDPOINT", raising=False)
    monkeypatch.delenv("INPAINTD_KEY", raising=False)
    monkeypatch.delenv("INPAINTD_CONNECTION_FILE", raising=False)
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def test_resolve_default(clean_env):
    assert resolve_endpoint() == DEFAULT_ENDPOINT


def test_resolve_env_over_default(clean_env, monkeypatch):
    monkeypatch.setenv("INPAINTD_ENDPOINT", "tcp://10.0.0.2:9000")
    assert resolve_endpoint() == "tcp://10.0.0.2:9000"


def test_resolve_explicit_over_env(clean_env, monkeypatch):
    monkeypatch.setenv("INPAINTD_ENDPOINT", "tcp://10.0.0.2:9000")
    assert resolve_endpoint("ipc:///tmp/inpaintd.sock") == "ipc:///tmp/inpaintd.sock"


def test_resolve_empty_explicit_falls_back(clean_env, monkeypatch):
    monkeypatch.setenv("INPAINTD_ENDPOINT", "tcp://h:1")
    assert resolve_endpoint("") == "tcp://h:1"


def test_resolve_empty_env_falls_back_to_default(clean_env, monkeypatch):
    monkeypatch.setenv("INPAINTD_ENDPOINT", "")
    assert resolve_endpoint() == DEFAULT_ENDPOINT


def test_resolve_env_over_connection_file(clean_env, monkeypatch, tmp_path):
    f = tmp_path / "conn.json"
    f.write_text(json.dumps({"endpoint": "tcp://10.9.9.9:1234", "key": "k"}))
    monkeypatch.setenv("INPAINTD_CONNECTION_FILE", str(f))
    assert resolve_endpoint() == "tcp://10.9.9.9:1234"
    monkeypatch.setenv("INPAINTD_ENDPOINT", "tcp://10.0.0.2:9000")
    assert resolve_endpoint() == "tcp://10.0.0.2:9000"
    assert resolve_endpoint("tcp://h:1") == "tcp://h:1"


@pytest.mark.parametrize(
    "ep", ["tcp://127.0.0.1:7415", "tcp://localhost:1", "tcp://[::1]:7415", "ipc:///run/x.sock", "inproc://a", "tcp://*:7415"]
)
def test_resolve_accepts_valid(clean_env, ep):
    assert resolve_endpoint(ep) == ep


@pytest.mark.parametrize(
    "ep",
    [
        "127.0.0.1:7415",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:",
        "tcp://127.0.0.1:port",
        "tcp://127.0.0.1:123456",
        "http://127.0.0.1:7415",
        "tcp://a b:7415",
        "tcp://host:7415 extra",
        "ipc://",
        "garbage",
    ],
)
def test_resolve_rejects_garbage(clean_env, ep):
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        resolve_endpoint(ep)


def test_resolve_rejects_garbage_from_env(clean_env, monkeypatch):
    monkeypatch.setenv("INPAINTD_ENDPOINT", "localhost")
    with pytest.raises(ValueError):
        resolve_endpoint()


def test_resolve_rejects_trailing_newline(clean_env):
    with pytest.raises(ValueError):
        resolve_endpoint("tcp://127.0.0.1:7415\n")


@pytest.mark.parametrize("ep", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:70000"])
def test_resolve_rejects_port_out_of_range(clean_env, ep):
    with pytest.raises(ValueError):
        resolve_endpoint(ep)


# --- connection: files and keys ----------------------------------------------------------


def test_runtime_dir_from_env(clean_env):
    assert runtime_dir() == clean_env


def test_runtime_dir_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("INPAINTD_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if sys.platform != "win32":
        assert runtime_dir() == tmp_path / "inpaintd"


def test_connection_file_name_is_safe(clean_env):
    p = connection_file("tcp://127.0.0.1:7415")
    assert p.parent == clean_env
    assert p.name == "connection-127.0.0.1_7415.json"
    q = connection_file("ipc:///tmp/a b/../x.sock")
    assert q.parent == clean_env and "/" not in q.name and " " not in q.name


def test_connection_files_differ_per_endpoint(clean_env):
    assert connection_file("tcp://127.0.0.1:7415") != connection_file("tcp://127.0.0.1:7416")


def test_write_connection_file_0600_and_read_back(clean_env):
    key = new_key()
    path = write_connection_file("tcp://127.0.0.1:7415", key, {"pid": 123})
    assert path.exists()
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    data = read_connection_file("tcp://127.0.0.1:7415")
    assert data == {"endpoint": "tcp://127.0.0.1:7415", "key": key.decode(), "signature_scheme": "hmac-sha256", "pid": 123}
    assert not path.with_suffix(".tmp").exists()


def test_write_connection_file_without_key(clean_env):
    write_connection_file("tcp://127.0.0.1:7415", None)
    assert read_connection_file("tcp://127.0.0.1:7415")["key"] == ""
    assert find_key("tcp://127.0.0.1:7415") is None


def test_write_connection_file_overwrites(clean_env):
    write_connection_file("tcp://h:1", b"first")
    write_connection_file("tcp://h:1", b"second")
    assert find_key("tcp://h:1") == b"second"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_write_connection_file_0600_even_if_tmp_exists(clean_env):
    path = connection_file("tcp://127.0.0.1:7415")
    path.parent.mkdir(parents=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("")
    os.chmod(tmp, 0o644)
    write_connection_file("tcp://127.0.0.1:7415", b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_connection_file_missing_or_corrupt(clean_env):
    assert read_connection_file("tcp://127.0.0.1:7415") is None
    p = connection_file("tcp://127.0.0.1:7415")
    p.parent.mkdir(parents=True)
    p.write_text("{not json")
    assert read_connection_file("tcp://127.0.0.1:7415") is None
    p.write_text(json.dumps([1, 2]))
    assert read_connection_file("tcp://127.0.0.1:7415") is None
    assert find_key("tcp://127.0.0.1:7415") is None


def test_find_key_env_first(clean_env, monkeypatch):
    write_connection_file("tcp://127.0.0.1:7415", b"from-file")
    monkeypatch.setenv("INPAINTD_KEY", "from-env")
    assert find_key("tcp://127.0.0.1:7415") == b"from-env"


def test_find_key_file_when_no_env(clean_env):
    write_connection_file("tcp://127.0.0.1:7415", b"from-file")
    assert find_key("tcp://127.0.0.1:7415") == b"from-file"
    assert find_key("tcp://127.0.0.1:9999") is None  # other endpoint, other file


def test_find_key_empty_env_falls_back_to_file(clean_env, monkeypatch):
    write_connection_file("tcp://127.0.0.1:7415", b"from-file")
    monkeypatch.setenv("INPAINTD_KEY", "")
    assert find_key("tcp://127.0.0.1:7415") == b"from-file"


def test_find_key_non_string_key_in_file(clean_env):
    p = connection_file("tcp://h:1")
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"key": 1234}))
    assert find_key("tcp://h:1") is None


def test_runtime_dir_empty_variables_count_as_unset(monkeypatch, tmp_path):
    """PROTOCOL.md 3.2: a variable that is set but empty counts as unset."""
    monkeypatch.setenv("INPAINTD_RUNTIME_DIR", "")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if sys.platform != "win32":
        assert runtime_dir() == tmp_path / "inpaintd"
        monkeypatch.setenv("XDG_RUNTIME_DIR", "")
        assert runtime_dir() == Path.home() / ".config" / "inpaintd" / "run"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_write_connection_file_tightens_an_existing_folder(clean_env):
    """PROTOCOL.md 3.2: a runtime folder that already existed, open to others, becomes 0700."""
    clean_env.mkdir(mode=0o755)
    os.chmod(clean_env, 0o755)
    write_connection_file("tcp://127.0.0.1:7415", b"secret")
    assert stat.S_IMODE(clean_env.stat().st_mode) == 0o700


def test_connection_file_env_is_the_only_file_read(clean_env, monkeypatch, tmp_path):
    """PROTOCOL.md 3.3: INPAINTD_CONNECTION_FILE gives the key whatever gave the endpoint,
    and when it names no readable file the runtime folder is not searched instead."""
    write_connection_file("tcp://127.0.0.1:7415", b"from-runtime-folder")
    copy = tmp_path / "remote.json"
    copy.write_text(json.dumps({"endpoint": "tcp://10.0.0.9:7415", "key": "from-copy"}))
    monkeypatch.setenv("INPAINTD_CONNECTION_FILE", str(copy))
    assert find_key("tcp://127.0.0.1:7415") == b"from-copy"
    copy.unlink()
    assert find_key("tcp://127.0.0.1:7415") is None


def test_localhost_falls_back_to_the_127_0_0_1_file(clean_env):
    write_connection_file("tcp://127.0.0.1:7415", b"k")
    assert find_key("tcp://localhost:7415") == b"k"


def test_new_key_random_hex():
    a, b = new_key(), new_key()
    assert a != b and len(a) == 64
    int(a, 16)


def test_module_env_names():
    assert connection.CONNECTION_DIR_ENV == "INPAINTD_RUNTIME_DIR"


# --- import weight -----------------------------------------------------------------------


def test_import_protocol_does_not_pull_numpy_or_torch():
    code = (
        "import sys, protocol, inpaintd_protocol.client, inpaintd_protocol.wire, inpaintd_protocol.connection, inpaintd_protocol.messages\n"
        "heavy = sorted(m for m in ('numpy', 'torch', 'cv2', 'diffusers', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


def test_notes_for_user_say_when_a_prompt_was_not_used():
    from inpaintd_protocol.client import Job

    job = Job(request_id="r", state="done", result={"engine": "classical", "model": "opencv-telea", "notes": ["retried"]})
    notes = job.notes_for_user("a red apple")
    assert notes[0] == "retried" and "The prompt was not used" in notes[1] and "'opencv-telea'" in notes[1]
    assert job.notes_for_user("  ") == ["retried"]  # no prompt, nothing was ignored
    assert Job(request_id="r", result={"engine": "diffusers", "notes": []}).notes_for_user("x") == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_shared_runtime_folder_is_never_changed_and_gets_no_key(clean_env):
    """PROTOCOL.md 3.2: a sticky folder like /tmp is not made 0700 (as root that would lock
    everyone out of it); the key is not written there and the error names the folder."""
    clean_env.mkdir()
    os.chmod(clean_env, 0o1777)
    with pytest.raises(PermissionError) as err:
        write_connection_file("tcp://127.0.0.1:7415", b"secret")
    assert str(clean_env) in str(err.value) and "INPAINTD_RUNTIME_DIR" in str(err.value)
    assert stat.S_IMODE(clean_env.stat().st_mode) == 0o1777
    assert not list(clean_env.iterdir())


def test_windows_folder_with_an_empty_appdata(monkeypatch):
    monkeypatch.delenv("INPAINTD_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", "")
    assert runtime_dir() == Path.home() / "inpaintd"  # not a relative "inpaintd" folder
    monkeypatch.setenv("APPDATA", "/appdata")
    assert runtime_dir() == Path("/appdata") / "inpaintd"


def test_bind_ignores_a_copied_connection_file(monkeypatch, tmp_path):
    """PROTOCOL.md 1: a connection file says where to connect, never where to listen."""
    copy = tmp_path / "remote.json"
    copy.write_text(json.dumps({"endpoint": "tcp://10.0.0.9:7415", "key": "k"}))
    monkeypatch.delenv("INPAINTD_ENDPOINT", raising=False)
    monkeypatch.setenv("INPAINTD_CONNECTION_FILE", str(copy))
    assert resolve_endpoint() == "tcp://10.0.0.9:7415"
    assert resolve_endpoint(use_connection_file=False) == "tcp://127.0.0.1:7415"
