"""Coders 7 and 8 (format version 7): the neighbours' prediction of each element's mean, in four passes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest


def _reference_prediction(k, m, p):
    """codec/FORMAT.md's definition, element by element in Python integers: for a pass-p position, its
    neighbours (distance 2 in a row or column for pass 1, diagonal for 2, direct for 3) inside the latent,
    R = 4k − m, P = floor((2·ΣR + N) / (2N)), class = min(max |R_n − P| >> 1, 7)."""
    nbrs = {1: ((-2, 0), (2, 0), (0, -2), (0, 2)), 2: ((-1, -1), (-1, 1), (1, -1), (1, 1)),
            3: ((-1, 0), (1, 0), (0, -1), (0, 1))}[p]
    c, h, w = k.shape
    pred, cls = {}, {}
    for ch in range(c):
        for r in range(h):
            for col in range(w):
                rs = [4 * int(k[ch, r + dr, col + dc]) - int(m[ch, r + dr, col + dc])
                      for dr, dc in nbrs if 0 <= r + dr < h and 0 <= col + dc < w]
                if not rs:
                    continue
                n = len(rs)
                pp = (2 * sum(rs) + n) // (2 * n)
                pred[ch, r, col] = pp
                cls[ch, r, col] = min(max(abs(v - pp) for v in rs) >> 1, 7)
    return pred, cls


@pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (5, 1), (3, 3), (6, 7), (9, 10)])
def test_every_neighbour_of_a_pass_is_coded_before_it(h, w):
    from aekit.export.hyperprior import _SPATIAL_NEIGHBOURS, spatial_passes

    passes = spatial_passes(h, w)
    assert passes.dtype == np.int8 and set(np.unique(passes)) <= {0, 1, 2, 3} and passes[0, 0] == 0
    for r in range(h):
        for c in range(w):
            p = int(passes[r, c])
            if p == 0:
                continue
            inside = [(r + dr, c + dc) for dr, dc in _SPATIAL_NEIGHBOURS[p] if 0 <= r + dr < h and 0 <= c + dc < w]
            assert inside and all(passes[rr, cc] < p for rr, cc in inside), (r, c, p)


def test_prediction_and_classes_are_the_documented_integers():
    from aekit.export.hyperprior import spatial_passes, spatial_prediction

    rng = np.random.default_rng(0)
    k = rng.integers(-127, 128, (3, 7, 9)).astype(np.int16)
    k[1] = 5  # a flat channel: P = R exactly, class 0
    m = rng.integers(-511, 512, (3, 7, 9)).astype(np.int16)
    m[1] = 18
    passes = spatial_passes(7, 9)
    for p in (1, 2, 3):
        pred, cls = spatial_prediction(k, m, p)
        ref_p, ref_c = _reference_prediction(k, m, p)
        for ch, r, c in zip(*np.nonzero(np.broadcast_to(passes == p, k.shape))):
            assert (pred[ch, r, c], cls[ch, r, c]) == (ref_p[ch, r, c], ref_c[ch, r, c]), (p, ch, r, c)
        assert (pred[1][passes == p] == 2).all() and (cls[1][passes == p] == 0).all()


def _shipped(name, **cfg):
    import aekit.codec.core as core
    from aekit.export.manifest import resolve_model

    model = resolve_model(name)
    return model, core.Codec(model, core.CodecConfig(workers=1, **{"post_filter": False, **cfg}))  # coders only


def test_coder_7_and_8_shrink_a_smooth_real_photo_and_decode_in_another_process(tmp_path):
    """scikit-image's rocket (sky, smooth walls) at the default quality: with photos-r4 (channel context) compress
    writes coder 8, 2.9 % smaller than its coder-6 file when written, with photos-r9-fast (none) coder 7, 2.4 % smaller
    than coder 5's; the files are version 7 and another process with other threads decodes the same symbols."""
    import skimage.data

    from aekit.codec.format import parse

    image = skimage.data.rocket()
    for name, coder, old_coder, most in (("photos-r4", 8, 6, 0.98), ("photos-r9-fast", 7, 5, 0.985)):
        model, codec = _shipped(name)
        _, old_codec = _shipped(name, spatial_context=False)
        q = codec.symbols(image[None])[0]
        data, old = codec.compress(image), old_codec.compress(image)
        (h, payload), (h_old, p_old) = parse(data), parse(old)
        assert (h.coder, data[4], h_old.coder) == (coder, 7, old_coder), name
        assert len(payload) < most * len(p_old), (name, len(payload), len(p_old))
        (tmp_path / f"{name}.ael").write_bytes(data)
        np.save(tmp_path / f"{name}.npy", q)
        code = ("import numpy as np; import aekit.codec.core as c\n"
                f"d = c.Decoder([{str(model)!r}], c.CodecConfig(threads=2))\n"
                f"q = d.symbols(open({str(tmp_path / name)!r} + '.ael', 'rb').read())[1]\n"
                f"assert np.array_equal(q, np.load({str(tmp_path / name)!r} + '.npy'))\n")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_coder_7_round_trips_a_fresh_model_and_refuses_malformed_payloads(hp_model, rgb_photos):
    """Coder 7 on a seconds-old hyperprior model (where it may not win) still decodes to the same symbols; a
    version-6 header cannot carry it; malformed parameters or a cut stream are refused with EntropyError."""
    import aekit.codec.core as core
    from aekit.codec.format import LatentFormatError, pack, parse
    from aekit.export.entropy import CODER_SPATIAL, EntropyError
    from test_codec_hyperprior import _with_version  # the version byte set, the CRC recomputed

    codec = core.Codec(hp_model)
    image = rgb_photos[1][:120, :152]
    q = codec.symbols(image[None])[0]
    z, table, base = codec.em._side(q)
    payload = codec.em._encode_spatial(q, z, table, base)
    assert np.array_equal(codec.em.decode(CODER_SPATIAL, payload, q.shape), q)
    data = pack(codec.header(120, 152, "RGB", CODER_SPATIAL), payload)
    assert data[4] == 7 and np.array_equal(core.Decoder([hp_model]).symbols(data)[1], q)
    with pytest.raises(LatentFormatError, match="coder 7 needs format version 7"):
        parse(_with_version(data, payload, 6))
    at = 2 + 3 * int.from_bytes(payload[:2], "little")  # the spatial mask, after the offset list
    for bad, why in ((payload[:at] + (1 << 24).to_bytes(4, "little") + payload[at + 4:], "beyond 23"),
                     (payload[:at] + b"\1\0\0\0\0\5" + payload[at + 4:], "a outside 0..4"),
                     (payload[:at] + b"\1\0\0\0\0\0" + payload[at + 4:], "a outside 0..4, or a listed slot"),
                     (payload[:at + 2], "too short|cut off"),
                     (payload[:-4], "corrupt"), (payload + b"\0\0\0\0", "corrupt")):
        with pytest.raises(EntropyError, match=why):
            codec.em.decode(CODER_SPATIAL, bad, q.shape)


def test_no_spatial_context_keeps_readers_before_version_7(tmp_path):
    """`aekit compress --no-spatial-context` writes coder 3/4/5 for a model without a channel context (version ≤ 5)."""
    import skimage.data
    from PIL import Image

    from aekit.cli import main
    from aekit.codec.format import parse

    Image.fromarray(skimage.data.coffee()[:200, :240]).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "-m", "photos-r9-fast", "-o", str(tmp_path / "a.ael"),
                 "--no-spatial-context"]) == 0
    data = (tmp_path / "a.ael").read_bytes()
    assert parse(data)[0].coder in (3, 4, 5) and data[4] <= 5
