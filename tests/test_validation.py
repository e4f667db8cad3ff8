"""Unit tests for inpaintd.validation: submit options and image/mask descriptors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inpaintd.validation import parse_options, parse_submit
from inpaintd_protocol.messages import LIMITS, OPTION_RULES, SCHEDULERS, Code, JobOptions, Limits, ProtocolError
from inpaintd_protocol.wire import Message


def desc(frame, w, h, c, stride=None):
    d = {"frame": frame, "width": w, "height": h, "channels": c}
    if stride is not None:
        d["stride"] = stride
    return d


def submit(w=8, h=6, c=3, body=None, image=None, mask=None, buffers=None):
    """A valid submit message of a w x h image with a non-empty mask, optionally overridden."""
    img = np.arange(w * h * c, dtype=np.uint32).astype(np.uint8).tobytes()
    m = np.zeros((h, w), np.uint8)
    m[h // 2, w // 2] = 255
    b = {"prompt": "x"}
    b["image"] = desc(1, w, h, c) if image is None else image
    b["mask"] = desc(2, w, h, 1) if mask is None else mask
    b.update(body or {})
    return Message(type="submit", body=b, buffers=buffers if buffers is not None else [img, m.tobytes()])


def error_of(fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return info.value


# --- options -----------------------------------------------------------------------------


def test_empty_body_gives_defaults():
    assert parse_options({}) == JobOptions()


def test_all_options_set():
    body = {
        "prompt": "a", "negative_prompt": "b", "seed": 42, "variants": 3, "steps": 30, "guidance_scale": 5,
        "strength": 0.6, "scheduler": "euler", "model": "sd", "grow": 0, "feather": 0, "padding": 100,
    }
    opts = parse_options(body)
    for k, v in body.items():
        assert getattr(opts, k) == v


def test_unknown_keys_ignored():
    assert parse_options({"image": {}, "whatever": 1}) == JobOptions()


WRONG_TYPES = {
    "prompt": 5,
    "negative_prompt": None,
    "seed": 1.0,
    "variants": "2",
    "steps": 20.5,
    "guidance_scale": "7",
    "strength": None,
    "scheduler": 1,
    "model": ["m"],
    "grow": 2.0,
    "feather": "8",
    "padding": [1],
    "color_match": 1,  # 0/1 are not booleans
    "fill": True,
    "style": 3,
    "reference_weight": "1",
}


def test_color_match_is_a_boolean():
    assert parse_options({"color_match": True}).color_match is True
    assert parse_options({}).color_match is False
    err = error_of(parse_options, {"color_match": "yes"})
    assert err.code == Code.BAD_FIELD_TYPE and "'color_match' must be bool, got str" in err.message


@pytest.mark.parametrize("name", sorted(OPTION_RULES))
def test_each_option_wrong_type_names_field(name):
    err = error_of(parse_options, {name: WRONG_TYPES[name]})
    assert err.code == Code.BAD_FIELD_TYPE
    assert err.details == {"field": name}
    assert f"'{name}'" in err.message


@pytest.mark.parametrize("name", [n for n, (t, _, _) in OPTION_RULES.items() if int in t])
def test_bool_is_not_a_number(name):
    err = error_of(parse_options, {name: True})
    assert err.code == Code.BAD_FIELD_TYPE and err.details["field"] == name
    assert "bool" in err.message


RANGED = [(n, low, high) for n, (_, low, high) in OPTION_RULES.items() if low is not None]


@pytest.mark.parametrize("name,low,high", RANGED)
def test_each_option_bounds_inclusive(name, low, high):
    kind = int if float not in OPTION_RULES[name][0] else float
    assert getattr(parse_options({name: kind(low)}), name) == low
    assert getattr(parse_options({name: kind(high)}), name) == high


@pytest.mark.parametrize("name,low,high", RANGED)
def test_each_option_below_range_names_field(name, low, high):
    value = low - 1 if isinstance(low, int) else low - 0.001
    err = error_of(parse_options, {name: value})
    assert err.code == Code.BAD_VALUE and err.details == {"field": name}
    assert f"'{name}'" in err.message and str(high) in err.message


@pytest.mark.parametrize("name,low,high", RANGED)
def test_each_option_above_range_names_field(name, low, high):
    value = high + 1 if isinstance(high, int) else high + 0.001
    err = error_of(parse_options, {name: value})
    assert err.code == Code.BAD_VALUE and err.details == {"field": name}
    assert str(low) in err.message


def test_seed_full_32_bit_range():
    assert parse_options({"seed": 2**32 - 1}).seed == 2**32 - 1
    assert error_of(parse_options, {"seed": 2**32}).code == Code.BAD_VALUE
    assert error_of(parse_options, {"seed": -2}).code == Code.BAD_VALUE


def test_int_accepted_for_float_options():
    opts = parse_options({"guidance_scale": 7, "strength": 1})
    assert opts.guidance_scale == 7 and opts.strength == 1


@pytest.mark.parametrize("name", ["guidance_scale", "strength"])
def test_nan_rejected(name):
    # NaN compares False with every bound, so a plain range check lets it through
    err = error_of(parse_options, {name: math.nan})
    assert err.code == Code.BAD_VALUE and err.details["field"] == name


@pytest.mark.parametrize("name", ["guidance_scale", "strength"])
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinity_rejected(name, value):
    assert error_of(parse_options, {name: value}).code == Code.BAD_VALUE


@pytest.mark.parametrize("name", ["prompt", "negative_prompt"])
def test_prompt_length_limit(name):
    limits = Limits(max_prompt_chars=10)
    assert getattr(parse_options({name: "x" * 10}, limits), name) == "x" * 10
    err = error_of(parse_options, {name: "x" * 11}, limits)
    assert err.code == Code.TOO_LARGE and err.details == {"field": name}
    assert "11" in err.message and "10" in err.message


def test_prompt_length_default_limit():
    err = error_of(parse_options, {"prompt": "x" * (LIMITS.max_prompt_chars + 1)})
    assert err.code == Code.TOO_LARGE


@pytest.mark.parametrize("s", SCHEDULERS)
def test_known_schedulers(s):
    assert parse_options({"scheduler": s}).scheduler == s


def test_unknown_scheduler_lists_known():
    err = error_of(parse_options, {"scheduler": "magic"})
    assert err.code == Code.BAD_VALUE and err.details == {"field": "scheduler"}
    assert "magic" in err.message and "euler" in err.message


def test_options_errors_come_before_image_errors():
    msg = submit(body={"steps": -5}, image="broken")
    err = error_of(parse_submit, msg)
    assert err.details["field"] == "steps"


# --- a good submit -----------------------------------------------------------------------


@pytest.mark.parametrize("c", [3, 4])
def test_valid_submit(c):
    req = parse_submit(submit(w=8, h=6, c=c, body={"steps": 10}))
    assert req.image.shape == (6, 8, c) and req.image.dtype == np.uint8
    assert req.mask.shape == (6, 8)
    assert req.options.steps == 10 and req.options.prompt == "x"


def test_image_is_read_only_view_without_copy():
    msg = submit(w=8, h=6, c=4)
    req = parse_submit(msg)
    assert not req.image.flags.writeable and not req.mask.flags.writeable
    assert np.shares_memory(req.image, np.frombuffer(msg.buffers[0], np.uint8))
    assert np.shares_memory(req.mask, np.frombuffer(msg.buffers[1], np.uint8))


def test_pixel_layout_rows_and_channels():
    w, h = 5, 4
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    m = np.zeros((h, w), np.uint8)
    m[1, 2] = 9
    req = parse_submit(submit(w=w, h=h, buffers=[img.tobytes(), m.tobytes()]))
    assert np.array_equal(req.image, img)
    assert np.array_equal(req.mask, m)


def test_strided_input_wrapped_without_copy():
    w, h, c, stride = 5, 4, 3, 20  # 15 bytes of pixels, 5 of padding per row
    rows = np.zeros((h, stride), np.uint8)
    img = np.random.default_rng(1).integers(0, 256, (h, w, c), dtype=np.uint8)
    rows[:, : w * c] = img.reshape(h, w * c)
    rows[:, w * c :] = 0xEE  # padding must never show up in pixels
    mrows = np.full((h, 8), 0xEE, np.uint8)
    mrows[:, :w] = 0
    mrows[2, 3] = 255
    buf, mbuf = bytearray(rows.tobytes()), bytearray(mrows.tobytes())
    msg = submit(w=w, h=h, image=desc(1, w, h, c, stride), mask=desc(2, w, h, 1, 8), buffers=[buf, mbuf])
    req = parse_submit(msg)
    assert np.array_equal(req.image, img)
    assert req.mask[2, 3] == 255 and int(req.mask.sum()) == 255
    assert req.image.strides == (stride, c, 1)
    assert not req.image.flags.c_contiguous
    buf[0] = (int(img[0, 0, 0]) + 1) % 256  # same memory: a change shows through
    assert req.image[0, 0, 0] == (int(img[0, 0, 0]) + 1) % 256


def test_image_and_mask_in_same_order_any_frames():
    w, h = 4, 4
    img = np.full((h, w, 3), 7, np.uint8).tobytes()
    m = np.full((h, w), 255, np.uint8).tobytes()
    req = parse_submit(submit(w=w, h=h, image=desc(2, w, h, 3), mask=desc(1, w, h, 1), buffers=[m, img]))
    assert (req.image == 7).all() and (req.mask == 255).all()


# --- descriptor errors -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["image", "mask"])
def test_descriptor_missing(name):
    msg = submit()
    del msg.body[name]
    err = error_of(parse_submit, msg)
    assert err.code == Code.MISSING_FIELD and err.details == {"field": name}


@pytest.mark.parametrize("name", ["image", "mask"])
@pytest.mark.parametrize("value", [[1, 2], "img", 5, b"raw"])
def test_descriptor_not_a_map(name, value):
    msg = submit()
    msg.body[name] = value
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_FIELD_TYPE and err.details == {"field": name}


@pytest.mark.parametrize("name", ["image", "mask"])
@pytest.mark.parametrize("key", ["frame", "width", "height", "channels"])
def test_descriptor_key_missing(name, key):
    msg = submit()
    del msg.body[name][key]
    err = error_of(parse_submit, msg)
    assert err.code == Code.MISSING_FIELD and err.details == {"field": f"{name}.{key}"}


@pytest.mark.parametrize("name", ["image", "mask"])
@pytest.mark.parametrize("key", ["frame", "width", "height", "channels"])
@pytest.mark.parametrize("value", ["8", 8.0, True, None])
def test_descriptor_key_wrong_type(name, key, value):
    msg = submit()
    msg.body[name][key] = value
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_FIELD_TYPE and err.details == {"field": f"{name}.{key}"}


@pytest.mark.parametrize("name", ["image", "mask"])
@pytest.mark.parametrize("w,h", [(0, 6), (8, 0), (-1, 6), (0, 0)])
def test_zero_or_negative_dimensions(name, w, h):
    msg = submit()
    msg.body[name]["width"], msg.body[name]["height"] = w, h
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_VALUE and err.details == {"field": name}
    assert f"{w}x{h}" in err.message


@pytest.mark.parametrize("name", ["image", "mask"])
@pytest.mark.parametrize("w,h", [(LIMITS.max_side + 1, 1), (1, LIMITS.max_side + 1)])
def test_side_too_large_states_limit(name, w, h):
    msg = submit()
    msg.body[name]["width"], msg.body[name]["height"] = w, h
    err = error_of(parse_submit, msg)
    assert err.code == Code.TOO_LARGE and err.details == {"field": name}
    assert str(LIMITS.max_side) in err.message and str(LIMITS.max_pixels) in err.message


def test_total_pixels_too_large_states_limit():
    limits = Limits(max_side=100, max_pixels=50 * 50)
    msg = submit()
    msg.body["image"].update(width=51, height=50)
    err = error_of(parse_submit, msg, limits)
    assert err.code == Code.TOO_LARGE and "2500" in err.message
    # exactly at the limit is fine as far as size goes (then fails on bytes, not size)
    msg.body["image"].update(width=50, height=50)
    assert error_of(parse_submit, msg, limits).code == Code.BAD_IMAGE


def test_huge_dimensions_rejected_before_touching_buffers():
    msg = submit(buffers=[])  # no buffers at all: size must be refused first
    msg.body["image"].update(width=10**9, height=10**9)
    assert error_of(parse_submit, msg).code == Code.TOO_LARGE


@pytest.mark.parametrize("c", [0, 1, 2, 5])
def test_image_channels(c):
    msg = submit()
    msg.body["image"]["channels"] = c
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_VALUE and err.details == {"field": "image.channels"}
    assert "[3, 4]" in err.message


@pytest.mark.parametrize("c", [0, 3, 4])
def test_mask_channels(c):
    msg = submit()
    msg.body["mask"]["channels"] = c
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_VALUE and err.details == {"field": "mask.channels"}


@pytest.mark.parametrize("name,minimum", [("image", 8 * 3), ("mask", 8)])
def test_stride_too_small(name, minimum):
    msg = submit()
    msg.body[name]["stride"] = minimum - 1
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_VALUE and err.details == {"field": f"{name}.stride"}
    assert str(minimum) in err.message


@pytest.mark.parametrize("value", [-24, -1])
def test_stride_negative(value):
    msg = submit()
    msg.body["image"]["stride"] = value
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_VALUE and err.details == {"field": "image.stride"}


@pytest.mark.parametrize("value", [0, None])
def test_stride_zero_or_null_means_packed(value):
    # as ImageDesc does: stride 0 (or absent) = width x channels
    msg = submit()
    msg.body["image"]["stride"] = value
    msg.body["mask"]["stride"] = value
    req = parse_submit(msg)
    assert req.image.strides == (8 * 3, 3, 1)


@pytest.mark.parametrize("value", ["24", 24.0, True])
def test_stride_wrong_type(value):
    msg = submit()
    msg.body["image"]["stride"] = value
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_FIELD_TYPE and err.details == {"field": "image.stride"}


@pytest.mark.parametrize("delta", [-1, 1, -24])
def test_wrong_byte_count(delta):
    w, h = 8, 6
    img = bytes(w * h * 3 + delta)
    m = np.full((h, w), 255, np.uint8).tobytes()
    err = error_of(parse_submit, submit(w=w, h=h, buffers=[img, m]))
    assert err.code == Code.BAD_IMAGE and err.details == {"field": "image"}
    assert str(w * h * 3) in err.message and str(len(img)) in err.message


def test_stride_counts_in_byte_count():
    w, h = 8, 6
    m = np.full((h, w), 255, np.uint8).tobytes()
    # stride 30 needs 180 bytes, the tightly packed 144 is not enough
    msg = submit(w=w, h=h, image=desc(1, w, h, 3, 30), buffers=[bytes(w * h * 3), m])
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_IMAGE and "180" in err.message


@pytest.mark.parametrize("frame", [0, 3, -1, 99])
def test_frame_does_not_exist(frame):
    msg = submit()
    msg.body["image"]["frame"] = frame
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_IMAGE and err.details == {"field": "image.frame"}


def test_mask_wrong_byte_count():
    w, h = 8, 6
    msg = submit(w=w, h=h, buffers=[bytes(w * h * 3), bytes(w * h - 1)])
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_IMAGE and err.details == {"field": "mask"}


# --- cross checks ------------------------------------------------------------------------


def test_size_mismatch():
    w, h = 8, 6
    m = np.full((h + 1, w), 255, np.uint8).tobytes()
    msg = submit(w=w, h=h, mask=desc(2, w, h + 1, 1), buffers=[bytes(w * h * 3), m])
    err = error_of(parse_submit, msg)
    assert err.code == Code.SIZE_MISMATCH
    assert "8x6" in err.message and "8x7" in err.message


def test_empty_mask():
    w, h = 8, 6
    msg = submit(w=w, h=h, buffers=[bytes(w * h * 3), bytes(w * h)])
    assert error_of(parse_submit, msg).code == Code.EMPTY_MASK


def test_empty_mask_with_nonzero_row_padding_is_still_empty():
    w, h = 5, 4
    mrows = np.full((h, 8), 255, np.uint8)  # padding bytes set, pixels all zero
    mrows[:, :w] = 0
    msg = submit(w=w, h=h, mask=desc(2, w, h, 1, 8), buffers=[bytes(w * h * 3), mrows.tobytes()])
    assert error_of(parse_submit, msg).code == Code.EMPTY_MASK


def test_single_faint_pixel_mask_is_not_empty():
    w, h = 8, 6
    m = np.zeros((h, w), np.uint8)
    m[h - 1, w - 1] = 1
    req = parse_submit(submit(w=w, h=h, buffers=[bytes(w * h * 3), m.tobytes()]))
    assert req.mask[h - 1, w - 1] == 1


# -- admission: the fields, then the model -------------------------------------------------


class _Models:
    """A registry stand-in that admits one model and records what it was asked."""

    default_model_id = "patchmatch"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def admit(self, model_id: str):
        from inpaintd.engines.base import EngineError, ModelInfo

        self.asked.append(model_id)
        if model_id != "patchmatch":
            raise EngineError("unknown_model", f"unknown model '{model_id}'", {"field": "model"})
        return ModelInfo(model_id, "classical", "builtin", True, None)


def test_admit_checks_the_fields_before_the_model() -> None:
    from inpaintd.engines.base import EngineError
    from inpaintd.validation import admit

    models = _Models()
    request, model = admit(submit(), models)
    assert model == "patchmatch" and models.asked == ["patchmatch"] and request.mask.shape == (6, 8)
    # a NaN is refused by the field rules (once, in one place), and the model is not even asked
    err = error_of(admit, submit(body={"guidance_scale": math.nan, "model": "other"}), models)
    assert err.code == Code.BAD_VALUE and err.details["field"] == "guidance_scale"
    assert models.asked == ["patchmatch"]
    with pytest.raises(EngineError) as refused:
        admit(submit(body={"model": "other"}), models)
    assert refused.value.code == "unknown_model" and models.asked[-1] == "other"


# -- reference images ------------------------------------------------------------------------


def _with_references(*refs: tuple[int, int, int], body: dict | None = None) -> Message:
    """A valid submit plus reference images of (w, h, channels), frames 3, 4, ..."""
    msg = submit(body=body)
    descs, frames = [], []
    for i, (w, h, c) in enumerate(refs):
        descs.append(desc(3 + i, w, h, c))
        frames.append(np.full((h, w, c), 40 + i, np.uint8).tobytes())
    msg.body["references"] = descs
    msg.buffers = [*msg.buffers, *frames]
    return msg


def test_references_are_read_as_images_of_any_size() -> None:
    request = parse_submit(_with_references((5, 7, 3), (3, 2, 4)))
    assert [r.shape for r in request.references] == [(7, 5, 3), (2, 3, 4)]
    assert int(request.references[1][0, 0, 0]) == 41
    assert parse_submit(submit()).references == []


def test_bad_references_are_refused_naming_the_entry() -> None:
    err = error_of(parse_submit, submit(body={"references": {"frame": 3}}))
    assert err.code == Code.BAD_FIELD_TYPE and err.details["field"] == "references"
    err = error_of(parse_submit, _with_references(*[(2, 2, 3)] * (LIMITS.max_references + 1)))
    assert err.code == Code.TOO_LARGE and err.details["field"] == "references"
    err = error_of(parse_submit, _with_references((2, 2, 3), (2, 2, 1)))
    assert err.code == Code.BAD_VALUE and err.details["field"] == "references[1].channels"
    big = LIMITS.max_reference_side + 1
    msg = _with_references((big, 1, 3))
    err = error_of(parse_submit, msg)
    assert err.code == Code.TOO_LARGE and err.details["field"] == "references[0]" and str(LIMITS.max_reference_side) in err.message
    msg = _with_references((4, 4, 3))
    msg.buffers[2] = b"\x00" * 5
    err = error_of(parse_submit, msg)
    assert err.code == Code.BAD_IMAGE and err.details["field"] == "references[0]"


def test_a_model_that_takes_no_reference_refuses_one() -> None:
    from inpaintd.validation import admit

    err = error_of(admit, _with_references((4, 4, 3)), _Models())
    assert err.code == Code.BAD_VALUE and err.details["field"] == "references"
    assert "patchmatch" in err.message and "takes no reference image" in err.message
