"""Entropy coding of latent symbols: integer tables, exact round trips, fallbacks, golden bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from aekit.export.entropy import (CODER_ANS, CODER_RAW, CODER_ZSTD, PRECISION, EntropyError, EntropyModel,
                            integer_table)


def model(counts: np.ndarray) -> EntropyModel:
    cy, levels = counts.shape
    return EntropyModel.from_manifest({"latent": {"levels": levels}, "latent_channels": cy,
                                       "latent_hist": counts.tolist()})


def peaked(cy: int = 4, levels: int = 256, sd: float = 6.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(np.clip(rng.normal(128 + 10 * c, sd, 20000).astype(int), 0, levels - 1),
                                 minlength=levels) for c in range(cy)])


@pytest.mark.parametrize("counts", [np.zeros(256, int), np.arange(256), np.r_[10**12, np.zeros(255, int)],
                                    np.r_[np.ones(2, int)], np.full(256, 7)])
def test_integer_table_sums_exactly_and_keeps_every_symbol(counts):
    t = integer_table(counts)
    assert t.sum() == 1 << PRECISION and t.min() >= 1 and t.dtype == np.int64


def test_integer_table_is_proportional():
    counts = np.array([1, 3, 0, 6] + [0] * 252)
    t = integer_table(counts)
    assert abs(t[3] / t[0] - 6) < 1e-4 and t[2] == 1


def test_round_trip_and_near_ideal_length():
    em = model(peaked())
    rng = np.random.default_rng(1)
    q = np.clip(rng.normal(128, 6, (4, 37, 29)) + 10 * np.arange(4)[:, None, None], 0, 255).astype(np.uint8)
    coder, payload = em.encode(q)
    assert coder == CODER_ANS
    assert np.array_equal(em.decode(coder, payload, q.shape), q)
    assert len(payload) <= em.bits(q) / 8 + 12  # ANS is within a few bytes of the ideal code length


def test_incompressible_symbols_fall_back_to_raw():
    em = model(np.ones((2, 256), int))  # uniform tables: 8 bits per symbol, ANS cannot win
    q = np.random.default_rng(2).integers(0, 256, (2, 16, 16), dtype=np.uint8)
    coder, payload = em.encode(q)
    assert coder == CODER_RAW and payload == q.tobytes()
    assert np.array_equal(em.decode(coder, payload, q.shape), q)


def test_zstd_wins_on_runs_the_iid_model_cannot_see():
    em = model(np.ones((1, 256), int))
    q = np.repeat(np.arange(4, dtype=np.uint8) * 60, 1024).reshape(1, 64, 64)
    coder, payload = em.encode(q)
    assert coder == CODER_ZSTD and len(payload) < 100
    assert np.array_equal(em.decode(coder, payload, q.shape), q)


def test_zstd_full_trial_runs_only_where_the_probe_is_close(monkeypatch):
    """_smallest: the level-19 trial is skipped when the level-3 probe is over ZSTD_GATE x the model's own
    payload (the probe frame then stands as the zstd candidate), runs when the probe is close, and always
    runs with zstd_gate None (`--smallest`) or when no own coder produced a payload."""
    import aekit.export.entropy as ent

    levels, real = [], ent._zstd_compress
    monkeypatch.setattr(ent, "_zstd_compress", lambda raw, level=19: levels.append(level) or real(raw, level))
    q = np.random.default_rng(3).integers(100, 140, (2, 32, 32), dtype=np.uint8)
    probe = len(real(q.tobytes(), ent.ZSTD_PROBE_LEVEL))
    tiny = lambda _: b"\0" * (probe // 4)  # noqa: E731 (an own coder 4x smaller than the probe)
    assert ent._smallest(q, {CODER_ANS: tiny}, 19) == (CODER_ANS, tiny(q)) and levels == [ent.ZSTD_PROBE_LEVEL]
    levels.clear()
    close = lambda _: b"\0" * probe  # noqa: E731
    assert ent._smallest(q, {CODER_ANS: close}, 19)[0] in (CODER_ANS, CODER_ZSTD) and levels == [ent.ZSTD_PROBE_LEVEL, 19]
    levels.clear()
    assert ent._smallest(q, {CODER_ANS: tiny}, 22, None)[0] == CODER_ANS and levels == [22]
    levels.clear()
    assert ent._smallest(q, {}, 19)[0] == CODER_ZSTD and levels == [19]
    with pytest.raises(ValueError, match="below 1"):
        ent._smallest(q, {CODER_ANS: tiny}, 19, 0.5)


def golden_inputs() -> tuple[np.ndarray, np.ndarray]:
    """A fixed histogram and message from integer formulas (no RNG: stable across numpy versions)."""
    s, c = np.arange(256), np.arange(2)[:, None]
    counts = np.maximum(0, 1000 - 150 * np.abs(s - 128 - 3 * c))  # (2, 256)
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    q = (128 + 3 * c[:, :, None] + (i * i * 7 + j * 13 + i * j * 5) % 9 - 4).astype(np.uint8)  # (2, 8, 8)
    return counts, q


def test_golden_payload_pins_the_bitstream():
    """Bytes of a fixed table and message: a change in table rule or ANS coding breaks this."""
    counts, q = golden_inputs()
    em = model(counts)
    coder, payload = em.encode(q)
    assert coder == CODER_ANS
    assert hashlib.sha256(em.tables.astype("<i8").tobytes()).hexdigest()[:16] == "66c003eee1196c7f"
    assert hashlib.sha256(payload).hexdigest()[:16] == "fc539a7b123ec45b"


@pytest.mark.parametrize("coder,payload,why", [
    (CODER_ANS, b"\x01\x02\x03", "whole number"),
    (CODER_ANS, b"\x00\x00\x00\x00" * 2, "too short"),
    (CODER_ZSTD, b"not a zstd frame", "zstd"),
    (CODER_RAW, b"\x00" * 5, "expected"),
    (9, b"", "unknown entropy coder"),
])
def test_corrupt_payloads_raise_entropy_error(coder, payload, why):
    em = model(peaked(cy=2))
    with pytest.raises(EntropyError, match=why):
        em.decode(coder, payload, (2, 8, 8))


def test_zstd_bomb_is_capped():
    import zstandard

    em = model(np.ones((1, 256), int))
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * 10**7)
    with pytest.raises(EntropyError):
        em.decode(CODER_ZSTD, bomb, (1, 10, 10))


def test_garbage_ans_payload_is_refused_not_crashing():
    em = model(peaked(cy=2))
    rng = np.random.default_rng(5)
    for _ in range(200):
        words = rng.integers(1, 2**32, int(rng.integers(1, 40)), dtype=np.uint64).astype("<u4").tobytes()
        try:
            q = em.decode(CODER_ANS, words, (2, 8, 8))
            assert q.shape == (2, 8, 8)
        except EntropyError:
            pass
