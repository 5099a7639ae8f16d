"""The .ael parser: every bad-input case gives one clean error, and a hypothesis fuzz test.

Uses a synthetic model folder (manifest + placeholder ONNX files): parsing and entropy
decoding need only the manifest, so these tests train nothing and run in seconds.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aekit.codec.core import CodecConfig, CodecError, Decoder
from aekit.codec.format import MAGIC, LatentFormatError, LatentHeader, pack, parse
from aekit.export.entropy import CODER_ANS, EntropyModel
from aekit.export.manifest import ModelError

FAKE_ONNX = b"placeholder"  # the fake model's "networks": the parser never runs them
MODEL_ID = hashlib.sha256(FAKE_ONNX + FAKE_ONNX).hexdigest()[:16]  # the id load_manifest recomputes
CLEAN = (LatentFormatError, CodecError, ModelError)


def fake_model(root: Path, model_id: str = MODEL_ID, channels: int = 1, factor: int = 4) -> Path:
    d = root / f"model-{model_id}"
    d.mkdir(parents=True, exist_ok=True)
    cy = channels * factor * factor // 4
    s = np.arange(256)
    hist = [np.maximum(0, 500 - 40 * np.abs(s - 128 - c)).tolist() for c in range(cy)]
    m = {"format": "aekit-model", "format_version": 1, "model_id": model_id, "channels": channels, "ratio": 4,
         "factor": factor, "latent_channels": cy, "latent": {"levels": 256, "range": [-1, 1], "dtype": "uint8"},
         "files": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}, "latent_hist": hist}
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "encoder.onnx").write_bytes(FAKE_ONNX)
    (d / "decoder.onnx").write_bytes(FAKE_ONNX)
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake-models")
    fake_model(root)
    return root


def valid_file(models: Path, h: int = 10, w: int = 7) -> bytes:
    from aekit.export.manifest import load_manifest

    em = EntropyModel.from_manifest(load_manifest(models / f"model-{MODEL_ID}"))
    lh, lw = -(-h // 4), -(-w // 4)
    q = (128 + (np.arange(4 * lh * lw).reshape(4, lh, lw) % 5) - 2).astype(np.uint8)
    coder, payload = em.encode(q)  # ANS, or raw for the tiniest sizes
    return pack(LatentHeader(MODEL_ID, h, w, "L", 4, (4, lh, lw), 256, 1, coder, 0), payload)


def decoder(models: Path) -> Decoder:
    return Decoder([models], CodecConfig(max_pixels=1 << 16))


def refix_crc(data: bytes) -> bytes:
    """Recompute the checksum of a (possibly mutated) file, so the semantic checks are reached."""
    pos = len(MAGIC) + 1 + 8  # walk the header as parse does, tolerating nonsense
    def varint():
        nonlocal pos
        for _ in range(5):
            if pos >= len(data):
                return
            b = data[pos]
            pos += 1
            if not b & 0x80:
                return
    varint(); varint(); pos += 3; varint(); varint(); varint()
    pos += 4 if len(data) > len(MAGIC) and data[len(MAGIC)] >= 2 else 3  # quantiser, (quality: v2), coder, flags
    varint()
    if pos + 4 > len(data):
        return data
    crc = zlib.crc32(data[pos + 4:], zlib.crc32(data[:pos]))
    return data[:pos] + crc.to_bytes(4, "little") + data[pos + 4:]


def test_pack_parse_round_trip(models):
    data = valid_file(models)
    h, payload = parse(data, "x.ael")
    assert (h.model_id, h.height, h.width, h.mode, h.latent_shape) == (MODEL_ID, 10, 7, "L", (4, 3, 2))
    assert h.coder == CODER_ANS
    hd, q = decoder(models).symbols(data, "x.ael")
    assert q.shape == (4, 3, 2) and q.dtype == np.uint8


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:3], "truncated file .* magic"),
    (lambda d: d[:20], "truncated file"),
    (lambda d: d[:-1], "truncated file"),
    (lambda d: d + b"\x00", "unexpected bytes after the payload"),
    (lambda d: b"GIF89a" + d[6:], "not an aekit latent file"),
    (lambda d: b"\x89PNG\r\n\x1a\n" + d[8:], "not an aekit latent file"),
    (lambda d: d[:4] + b"\x09" + d[5:], "version 9 is not supported .*a newer aekit.s file, or a corrupt header"),
    (lambda d: d[:-2] + bytes([d[-2] ^ 0x10]) + d[-1:], "checksum mismatch"),
    (lambda d: d[:6] + bytes([d[6] ^ 1]) + d[7:], "checksum mismatch"),
    (lambda d: b"", "truncated file"),
])
def test_bad_files_give_one_clean_line(models, mutate, match):
    with pytest.raises(LatentFormatError, match=match) as e:
        decoder(models).symbols(mutate(valid_file(models)), "bad.ael")
    assert str(e.value).startswith("bad.ael: ") and "\n" not in str(e.value)


def test_unknown_model_id_names_the_search_path(models):
    data = valid_file(models)
    forged = refix_crc(data[:5] + bytes.fromhex("ffffffffffffffff") + data[13:])
    with pytest.raises(ModelError, match=f"model ffffffffffffffff not found in {models}.*have: {MODEL_ID}"):
        decoder(models).symbols(forged, "x.ael")


@pytest.mark.parametrize("field_at,value,match", [
    (13, 100, "latent size"),  # height varint: 100 no longer matches the latent height
    (15, 9, "unknown image mode"),
    (16, 6, "latent size"),  # factor
    (17, 3, "disagrees with model"),  # latent channels (fits the file, not the model)
    (-20, 0, "."),  # somewhere in the payload (may decode to other symbols or fail cleanly)
])
def test_forged_headers_with_valid_checksum_are_refused(models, field_at, value, match):
    data = bytearray(valid_file(models))
    data[field_at] = value
    forged = refix_crc(bytes(data))
    try:
        decoder(models).symbols(forged, "f.ael")
    except CLEAN as e:
        assert "f.ael" in str(e) and len(str(e).splitlines()) == 1
    else:
        assert match == "."  # only the payload mutation may still decode


def test_forged_huge_image_is_refused_before_decoding(models):
    """A tiny file announcing a 20000 x 20000 image (a bomb) never allocates it."""
    h = LatentHeader(MODEL_ID, 20000, 20000, "L", 4, (4, 5000, 5000), 256, 1, CODER_ANS, 0)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decoder(models).symbols(pack(h, b"\x01\x00\x00\x00"), "bomb.ael")
    h = LatentHeader(MODEL_ID, 12000, 12000, "L", 4, (4, 3000, 3000), 256, 1, CODER_ANS, 0)
    big = Decoder([models], CodecConfig())  # under the pixel limit: the ANS length bound refuses it
    with pytest.raises(CodecError, match="too short to hold"):
        big.symbols(pack(h, b"\x01\x00\x00\x00"), "bomb.ael")


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for op, at, v in ops:
        i = at % (len(b) + 1)
        if op == "flip" and i < len(b):
            b[i] ^= 1 << v
        elif op == "set" and i < len(b):
            b[i] = v
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b.insert(i, v)
        elif op == "delete" and i < len(b):
            del b[i]
    return bytes(b)


FUZZ = settings(max_examples=1500, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4), size=st.sampled_from([(10, 7), (3, 3), (33, 41)]))
def test_fuzz_mutated_files_only_raise_clean_errors(models, ops, size):
    data = mutate(valid_file(models, *size), ops)
    try:
        h, q = decoder(models).symbols(data, "fuzz.ael")
    except CLEAN as e:
        assert str(e).startswith("fuzz.ael") or "not found" in str(e)
        return
    assert q.shape == h.latent_shape  # mutations that keep a valid file decode to a valid latent


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3), size=st.sampled_from([(10, 7), (33, 41)]))
def test_fuzz_forged_files_with_fixed_checksum_only_raise_clean_errors(models, ops, size):
    """Mutations with the checksum recomputed reach the semantic checks and the entropy decoder."""
    data = refix_crc(mutate(valid_file(models, *size), ops))
    try:
        h, q = decoder(models).symbols(data, "forged.ael")
    except CLEAN:
        return
    assert q.shape == h.latent_shape and q.dtype == np.uint8
