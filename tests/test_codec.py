"""The tensor codec: bit-exact round trips (property-tested), and every corruption detected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kv_store import CorruptRecord, RecordTooLarge, decode_record, encode_record
from kv_store.codec import DTYPES, peek_header


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    n = draw(st.integers(0, 4))
    out = {}
    for i in range(n):
        dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        numel = 1
        for s in shape:
            numel *= s
        raw = draw(
            st.binary(
                min_size=numel * torch.empty((), dtype=dtype).element_size(),
                max_size=numel * torch.empty((), dtype=dtype).element_size(),
            )
        )
        flat = (
            torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            if raw
            else torch.empty(0, dtype=torch.uint8)
        )
        tensor = flat.view(dtype).reshape(shape) if numel else torch.empty(shape, dtype=dtype)
        if dtype == torch.bool:
            tensor = tensor.view(torch.uint8).remainder(2).bool() if numel else tensor
        if draw(st.booleans()) and tensor.dim() >= 2:
            tensor = tensor.transpose(0, 1)  # non-contiguous input
        out[f"t{i}"] = tensor
    return out


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(tensors=tensor_dicts(), meta=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_round_trip_is_bit_exact(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    decoded, decoded_meta = decode_record(encode_record(tensors, meta, key="k"), expect_key="k")
    assert list(decoded) == list(tensors)
    for name, tensor in tensors.items():
        out = decoded[name]
        assert out.dtype == tensor.dtype and out.shape == tensor.shape
        assert torch.equal(_bits(out), _bits(tensor.contiguous()))
        assert out.is_contiguous()
    assert decoded_meta == meta


@settings(max_examples=150, deadline=None)
@given(tensors=tensor_dicts(), data=st.data())
def test_any_single_byte_change_is_detected(tensors: dict[str, torch.Tensor], data) -> None:
    record = bytearray(encode_record(tensors, {"m": 1}))
    index = data.draw(st.integers(0, len(record) - 1))
    record[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptRecord):
        decode_record(bytes(record))


@settings(max_examples=100, deadline=None)
@given(tensors=tensor_dicts(), data=st.data())
def test_any_truncation_is_detected(tensors: dict[str, torch.Tensor], data) -> None:
    record = encode_record(tensors, None)
    cut = data.draw(st.integers(0, len(record) - 1))
    with pytest.raises(CorruptRecord):
        decode_record(record[:cut])


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=200))
def test_foreign_bytes_are_corrupt_never_a_crash(junk: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_record(junk)


def test_size_limit_checked_before_encoding() -> None:
    with pytest.raises(RecordTooLarge, match="exceeds"):
        encode_record({"x": torch.zeros(1000)}, max_bytes=1000)
    encode_record({"x": torch.zeros(250)}, max_bytes=1200)  # header fits too


def test_header_names_the_key_and_no_pickle_inside() -> None:
    record = encode_record({"x": torch.ones(2)}, {"a": 1}, key="robot/1")
    header = peek_header(record)
    assert header["key"] == "robot/1" and header["tensors"] == [["x", "float32", [2], 8]]
    assert b"\x80\x04" not in record[:16]  # not a pickle stream
    with pytest.raises(CorruptRecord, match="expected"):
        decode_record(record, expect_key="robot/2")


def test_decoded_tensors_are_writable_and_independent() -> None:
    record = encode_record({"x": torch.ones(3)})
    first, _ = decode_record(record)
    first["x"] += 1
    second, _ = decode_record(record)
    assert torch.equal(second["x"], torch.ones(3))


def _legacy_v1_record(tensors: dict[str, torch.Tensor], meta: dict, key: str | None) -> bytes:
    """A version-1 record built by hand from its documented layout: prefix, JSON header,
    payload (what RedisStore wrote before the binary header)."""
    import json
    import struct

    import xxhash

    payload = b"".join(
        t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors.values()
    )
    names = {v: k for k, v in DTYPES.items()}
    header = json.dumps(
        {
            "tensors": [
                [n, names[t.dtype], list(t.shape), t.numel() * t.element_size()]
                for n, t in tensors.items()
            ],
            "meta": meta,
            "key": key,
            "payload_xxh3": xxhash.xxh3_64_intdigest(payload),
        }
    ).encode()
    prefix = struct.pack("<4sBIQ", b"TMR\x01", 1, len(header), xxhash.xxh3_64_intdigest(header))
    return prefix + header + payload


def test_version_1_records_are_still_read() -> None:
    tensors = {
        "k": torch.randn(2, 3),
        "flags": torch.tensor([True, False, True]),  # odd-sized: the next one is misaligned
        "h": torch.arange(4, dtype=torch.bfloat16),
    }
    old = _legacy_v1_record(tensors, {"step": 7}, key="session/robot/r1")
    decoded, meta = decode_record(old, expect_key="session/robot/r1")
    assert meta == {"step": 7} and list(decoded) == list(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(_bits(decoded[name]), _bits(tensor))
    assert peek_header(old)["key"] == "session/robot/r1"
    with pytest.raises(CorruptRecord, match="expected"):
        decode_record(old, expect_key="other")
    broken = bytearray(old)
    broken[-1] ^= 1
    with pytest.raises(CorruptRecord, match="checksum"):
        decode_record(bytes(broken))


def test_version_2_layout_is_binary_and_parts_join_to_the_record() -> None:
    import struct

    from kv_store.codec import DTYPE_CODES, check_tensors, encode_parts

    tensors = {"x": torch.arange(6, dtype=torch.int16).reshape(2, 3)}
    record = encode_record(tensors, {"a": 1}, key="k")
    magic, version, header_len, _ = struct.unpack_from("<4sBIQ", record)
    assert (magic, version) == (b"TMR\x01", 2)
    flags, n, key_len, meta_len, payload_len, _ = struct.unpack_from("<BHIIQQ", record, 17)
    assert (flags, n, key_len, meta_len, payload_len) == (1, 1, 1, 7, 12)
    code, ndim, name_len, nbytes = struct.unpack_from("<BBHQ", record, 17 + 27)
    assert (DTYPE_CODES[code], ndim, name_len, nbytes) == (torch.int16, 2, 1, 12)
    assert record[17 + header_len :] == tensors["x"].numpy().tobytes()
    assert b"".join(encode_parts(check_tensors(tensors), {"a": 1}, key="k")) == record
