"""The scale hyperprior (gdn-hp): model, Gaussian tables, the integer hyper decoder, coder 3, format v3."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aekit.cli import main
from aekit.config import ModelConfig
from aekit.entropy_models import SCALE_LEVELS, gaussian_likelihood, gaussian_pmf, scale_table
from aekit.models import build_model


@pytest.mark.parametrize("channels,ratio", [(3, 4), (3, 9), (1, 4)])
def test_y_keeps_the_ratio_and_z_is_a_small_side_latent(channels, ratio):
    cfg = ModelConfig(arch="gdn-hp", channels=channels, ratio=ratio, width=8)
    f = cfg.factor
    x = torch.rand(2, channels, 4 * f + 3, 2 * f) * 2 - 1  # y is 5 x 2: padded to 8 x 4 for h_a
    m = build_model(cfg).eval()
    out = m(x)
    assert out.x_hat.shape == x.shape
    c_y, h, w = out.y.shape[1:]
    assert c_y * ratio == channels * f * f and (h, w) == (5, 2)
    assert out.side_likelihoods.shape == (2, m.side_channels(c_y), 2, 1)
    bits = -torch.log2(out.likelihoods).sum() - torch.log2(out.side_likelihoods).sum()
    torch.testing.assert_close(m.rate_bpp(out, 2 * x.shape[2] * x.shape[3]), bits / (2 * x.shape[2] * x.shape[3]))


def test_gaussian_bins_and_tables_follow_the_normal_cdf():
    """p(bin k) = Φ((k+½)Δ/σ) − Φ((k−½)Δ/σ) (Ballé et al. 2018); the integer tables are the same pmf."""
    phi = lambda v: 0.5 * math.erfc(-v / math.sqrt(2))  # noqa: E731
    y = torch.tensor([0.0, 1.0, -3.0, 7.0]).view(1, 4, 1, 1)
    sigma = 2.5
    p = gaussian_likelihood(y, torch.full_like(y, math.log(sigma))).flatten()
    ref = [phi((abs(v) + 0.5) / sigma) - phi((abs(v) - 0.5) / sigma) for v in (0.0, 1.0, -3.0, 7.0)]
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-5)
    s = scale_table()
    assert s.shape == (SCALE_LEVELS,) and np.all(np.diff(s) > 0) and s[0] == pytest.approx(0.11)
    counts = gaussian_pmf(127)
    assert counts.shape == (4 * SCALE_LEVELS, 255) and counts.dtype == np.int64
    j, phase = 30, 3  # row 4j + φ: scale s_j, mean φ/4 of a step
    pmf = counts[4 * j + phase] / counts[4 * j + phase].sum()
    ref = np.array([phi((k + 0.5 - 0.75) / s[j]) - phi((k - 0.5 - 0.75) / s[j]) for k in range(-127, 128)])
    np.testing.assert_allclose(pmf[1:-1], ref[1:-1], atol=1e-8)
    mu = torch.tensor(2.3)  # the trained density with a mean: the same bins, shifted
    p = gaussian_likelihood(torch.tensor([3.0]).view(1, 1, 1, 1), torch.full((1, 1, 1, 1), math.log(sigma)), mean=mu)
    assert float(p) == pytest.approx(phi((0.7 + 0.5) / sigma) - phi((0.7 - 0.5) / sigma), rel=1e-5)


def test_integer_hyper_decoder_is_exact_integer_convolution():
    """With shift 0 and integer weights the integer h_s is torch's conv / conv_transpose, exactly."""
    from aekit.export.hyperprior import HYPER_ACT_BITS, HYPER_FRAC_BITS, IntegerHyperDecoder

    rng = np.random.default_rng(0)
    w0 = rng.integers(-3, 4, (4, 5, 5, 5))  # ConvTranspose2d weight: (in, out, k, k)
    w1 = rng.integers(-3, 4, (6, 5, 3, 3))  # Conv2d weight: (out, in, k, k): μ (3 channels), then ln σ (3)
    b0, b1 = rng.integers(-50, 50, 5), rng.integers(-50, 50, 6)
    specs = [{"kind": "conv_transpose", "stride": 2, "padding": 2, "output_padding": 1, "shift": 0, "relu": True},
             {"kind": "conv", "stride": 1, "padding": 1, "shift": 0, "relu": False}]
    dec = IntegerHyperDecoder(specs, {"w0": w0, "b0": b0, "w1": w1, "b1": b1})
    z = rng.integers(0, 255, (4, 3, 5)).astype(np.uint8)
    acc = np.concatenate([a for _, a in dec.outputs(z, 6, 10, rows=2)], axis=1)
    a = torch.from_numpy((z.astype(np.int64) - 127) << HYPER_FRAC_BITS).double()[None]
    # the stored biases are already in the accumulator's units (b_q = round(b · 2^(s + F_a)))
    h = F.conv_transpose2d(a, torch.from_numpy(w0).double(), torch.from_numpy(b0).double(), 2, 2, 1)
    h = h.clamp(0, 2**HYPER_ACT_BITS - 1)  # ReLU, and the contract's activation cap
    assert (h == 2**HYPER_ACT_BITS - 1).any()  # (this input reaches the cap)
    ref = F.conv2d(h, torch.from_numpy(w1).double(), torch.from_numpy(b1).double(), 1, 1)
    assert np.array_equal(acc, ref[0].numpy())
    t = np.array([-1e6, 0.0, 1e6])
    table, base = dec.tables(z, 6, 10, t, step4=6)  # Δ = 1.5
    acc = ref[0].numpy().astype(np.int64)
    f = HYPER_FRAC_BITS  # the last layer's shift is 0
    m4 = np.array([(16 * int(v) + 6 * 2 ** (f - 1)) // (6 * 2**f) for v in acc[:3].ravel()]).reshape(3, 6, 10)
    np.testing.assert_allclose(m4, np.floor(4 * (acc[:3] / 2**f) / 1.5 + 0.5))  # = round(4μ/Δ)
    assert np.array_equal(table, 4 * np.searchsorted(t, acc[3:], side="left") + m4 % 4)
    assert np.array_equal(base, np.clip(m4 // 4, -127, 127))


def test_hidden_layers_rescale_by_their_shift_rounding_half_up():
    from aekit.export.hyperprior import HYPER_FRAC_BITS, IntegerHyperDecoder

    rng = np.random.default_rng(1)
    w0, w1 = rng.integers(-40, 41, (3, 4, 3, 3)), rng.integers(-5, 6, (2, 3, 3, 3))
    b0, b1 = rng.integers(-999, 999, 3), rng.integers(-99, 99, 2)
    specs = [{"kind": "conv", "padding": 1, "shift": 3, "relu": True}, {"kind": "conv", "padding": 1, "shift": 0, "relu": False}]
    dec = IntegerHyperDecoder(specs, {"w0": w0, "b0": b0, "w1": w1, "b1": b1})
    z = rng.integers(120, 135, (4, 5, 6)).astype(np.uint8)
    acc = np.concatenate([a for _, a in dec.outputs(z, 5, 6)], axis=1)
    a = torch.from_numpy((z.astype(np.int64) - 127) << HYPER_FRAC_BITS).double()[None]
    h = F.conv2d(a, torch.from_numpy(w0).double(), torch.from_numpy(b0).double(), 1, 1)
    h = torch.floor((h.clamp_min(0) + 4) / 8)  # round half up of acc / 2^3
    ref = F.conv2d(h, torch.from_numpy(w1).double(), torch.from_numpy(b1).double(), 1, 1)
    assert np.array_equal(acc, ref[0].numpy())


def test_integer_hyper_decoder_refuses_weights_beyond_the_exact_bound():
    from aekit.export.entropy import EntropyError
    from aekit.export.hyperprior import IntegerHyperDecoder

    spec = [{"kind": "conv", "stride": 1, "padding": 1, "shift": 0, "relu": False}]
    with pytest.raises(EntropyError, match="exact-arithmetic bound"):
        IntegerHyperDecoder(spec, {"w0": np.full((2, 64, 3, 3), 1 << 22), "b0": np.zeros(2, dtype=np.int64)})
    with pytest.raises(EntropyError, match="unsupported kind"):
        IntegerHyperDecoder([{**spec[0], "stride": 2}], {"w0": np.ones((2, 2, 3, 3)), "b0": np.zeros(2)})


def test_warm_start_from_gdn_loads_the_transforms(tmp_path, photos_dir):
    from aekit.checkpoint import load_checkpoint
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, Trainer, train

    dc = DataConfig(resize="random-crop", size=64, repeat=1, workers=1, max_images=4)
    train(TrainConfig(data=str(photos_dir), out=str(tmp_path / "gdn"), epochs=1, batch_size=4, seed=0,
                      rate_weight=0.01, data_cfg=dc), ModelConfig(arch="gdn", ratio=9, width=8))
    tc = TrainConfig(data=str(photos_dir), out=str(tmp_path / "hp"), epochs=1, batch_size=4, seed=0, rate_weight=0.01,
                     init_from=str(tmp_path / "gdn" / "last.pt"), data_cfg=dc)
    t = Trainer(tc, ModelConfig(arch="gdn-hp", ratio=9, width=8))
    src = load_checkpoint(tmp_path / "gdn" / "last.pt")["state_dict"]
    own = t.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items() if k.startswith(("encoder.", "decoder.", "y_gain")))
    assert t.model.warm_transforms
    t.model.set_trunk_frozen(True)  # the first --freeze-epochs: only the hyperprior and priors learn
    assert not any(p.requires_grad for p in t.model.encoder.parameters())
    assert all(p.requires_grad for p in t.model.hyper_decoder.parameters())


def test_a_narrower_encoder_trains_behind_a_frozen_decoder_and_learns_the_teachers_y(tmp_path, photos_dir):
    """--encoder-width / --hyper-width with --init-from, --freeze-decoder and --distill-from (issue 17's fast
    compress): g_s and the z prior come from the wider run, g_a and the hyperprior are new and narrower, g_s
    is bit-identical after training, and the distillation term is in the loss."""
    from aekit.checkpoint import load_checkpoint
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, Trainer, train

    dc = DataConfig(resize="random-crop", size=64, repeat=1, workers=1, max_images=4)
    train(TrainConfig(data=str(photos_dir), out=str(tmp_path / "wide"), epochs=1, batch_size=4, seed=0,
                      rate_weight=0.01, data_cfg=dc), ModelConfig(arch="gdn-hp", ratio=9, width=8))
    src = str(tmp_path / "wide" / "last.pt")
    mc = ModelConfig(arch="gdn-hp", ratio=9, width=8, encoder_width=4, hyper_width=6)
    tc = TrainConfig(data=str(photos_dir), out=str(tmp_path / "fast"), epochs=2, batch_size=4, seed=0, rate_weight=0.01,
                     init_from=src, freeze_decoder=True, distill_from=src, distill_epochs=1, freeze_epochs=0, data_cfg=dc)
    t = Trainer(tc, mc)
    assert t.model.encoder[0].weight.shape[0] == 4 and t.model.hyper_encoder[0].weight.shape[0] == 6
    assert t.model.decoder[0].weight.shape[1] == 8
    t.run()
    before, after = load_checkpoint(src)["state_dict"], load_checkpoint(tmp_path / "fast" / "last.pt")["state_dict"]
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("decoder.", "y_gain")))
    assert not torch.equal(after["entropy.matrices.0"], before["entropy.matrices.0"])  # the z prior trained on
    from aekit.export.onnx import checkpoint_info

    assert "decoder frozen; g_a distilled from" in checkpoint_info(tmp_path / "fast" / "last.pt")  # aekit info
    t2 = Trainer(TrainConfig(**{**tc.__dict__, "out": str(tmp_path / "d2"), "epochs": 1}), mc)
    t2.distilling = True
    _, parts = t2._step(torch.zeros(4, 3, 64, 64).uniform_(-1, 1))
    assert parts["distill"] > 0  # mean (y - y_teacher)^2 of a fresh g_a
    with pytest.raises(ValueError, match="freeze_decoder"):
        Trainer(TrainConfig(data=str(photos_dir), out=str(tmp_path / "x"), rate_weight=0.01, freeze_decoder=True,
                            data_cfg=dc), mc)
    with pytest.raises(ValueError, match="hyper_width applies to gdn-hp only"):
        ModelConfig(arch="gdn", hyper_width=4)


def test_export_writes_the_hyperprior_and_pins_it_in_the_model_id(hp_model):
    from aekit.export.manifest import load_manifest

    m = load_manifest(hp_model)
    ent = m["entropy"]
    assert {"hyper_encoder", "hyper_decoder"} <= set(m["files"])
    assert len(ent["scale_tables"]) == 4 * SCALE_LEVELS and len(ent["hyper"]["tables"]) == ent["hyper"]["channels"]
    assert all(q["step4"] == 4 * q["step"] for q in ent["qualities"])
    assert all(len(q["thresholds"]) == SCALE_LEVELS - 1 for q in ent["qualities"])
    assert ent["hyper"]["index_agreement"] >= 0.99
    assert m["tile_context"] == {"encoder": 2, "decoder": 2}  # the receptive field, for tiles
    for q in ent["qualities"]:  # T_k = floor((ln s_k + ln Δ) 2^F)
        frac = ent["hyper"]["layers"][-1]["shift"] + ent["hyper"]["frac_bits"]
        assert q["thresholds"][5] == math.floor((math.log(scale_table()[5]) + math.log(q["step"])) * 2**frac)


def test_hyperprior_coder_round_trips_at_its_ideal_length(hp_model, rgb_photos):
    import aekit.codec.core as core
    from aekit.export.entropy import CODER_HYPER

    codec = core.Codec(hp_model)
    image = rgb_photos[0][:200, :150]  # y 17 x 13: not a multiple of 4 (z pads)
    q = codec.symbols(image[None])[0]
    em = codec.em
    payload = em._encode_hyper(q)
    assert np.array_equal(em.decode(CODER_HYPER, payload, q.shape), q)
    assert len(payload) * 8 == pytest.approx(em.bits(q), abs=64 + 0.01 * em.bits(q))
    coder, best = em.encode(q)
    assert len(best) <= len(payload) and coder in (0, 1, 3, 4)


def test_hyperprior_runs_in_bands_with_the_same_tables(hp_model, rgb_photos):
    """Large latents run h_s (and h_a) in bands of z rows with a halo (bounded memory): 1-row bands give
    exactly the integers of one pass, on the real model's h_s and on random ẑ; h_a's ẑ matches too."""
    import aekit.codec.core as core

    codec = core.Codec(hp_model)
    em = codec.em
    q = codec.symbols(rgb_photos[0][:230, :170][None])[0]  # y 20 x 15 (1/9 rounds up): z 5 x 4
    z = em.hyper_symbols(q)
    assert np.array_equal(em.hyper_symbols(q, band=1), z)
    assert em.decoder.halo >= 2
    rng = np.random.default_rng(3)
    for zz in (z, rng.integers(0, 255, z.shape).astype(np.uint8)):
        whole = em.decoder._tables(zz, q.shape[1], q.shape[2], em.thresholds, em.step4, band=z.shape[1])
        for band in (1, 2):
            parts = em.decoder._tables(zz, q.shape[1], q.shape[2], em.thresholds, em.step4, band=band)
            assert np.array_equal(parts[0], whole[0]) and np.array_equal(parts[1], whole[1])


def test_grouping_by_table_in_chunks_is_the_stable_sort(hp_model, rgb_photos, monkeypatch):
    """Coder 3 groups d by table, C order within a group (FORMAT.md); done as a counting sort in chunks
    (bounded memory), it is exactly np.argsort(kind="stable"), and files do not depend on the chunk."""
    import aekit.codec.core as core
    import aekit.export.hyperprior as hyperprior

    rng = np.random.default_rng(4)
    idx = rng.integers(0, 7, 1000).astype(np.uint8)
    monkeypatch.setattr(hyperprior, "GROUP_CHUNK", 97)
    start = hyperprior._group_starts(idx, 256)
    got = np.empty(idx.size, dtype=np.int64)
    for a, o, dest in hyperprior._group_chunks(idx, start[:-1].copy()):
        got[dest] = a + o
    assert np.array_equal(got, np.argsort(idx, kind="stable"))
    codec = core.Codec(hp_model)
    q = codec.symbols(rgb_photos[1][:200, :150][None])[0]
    small = codec.em._encode_hyper(q)
    # the encoder's per-channel tables (split): the same integers, and _group frees them channel by channel
    z, table, base = codec.em._side(q)
    _, tl, bl = codec.em._side(q, split=True)
    assert len(tl) == q.shape[0] and all(np.array_equal(t, table[c]) and np.array_equal(b, base[c])
                                         for c, (t, b) in enumerate(zip(tl, bl)))
    start_a, grouped_a = codec.em._group(q, table, base)
    start_l, grouped_l = codec.em._group(q, tl, bl)
    assert np.array_equal(start_a, start_l) and np.array_equal(grouped_a, grouped_l)
    assert tl == [None] * q.shape[0] and bl == [None] * q.shape[0]
    monkeypatch.setattr(hyperprior, "GROUP_CHUNK", 1 << 20)
    assert codec.em._encode_hyper(q) == small
    monkeypatch.setattr(hyperprior, "GROUP_CHUNK", 97)
    assert np.array_equal(codec.em._decode_hyper(small, q.shape), q)


def _with_version(data: bytes, payload: bytes, version: int) -> bytes:
    """A latent file with its version byte set to `version` and the CRC recomputed, so that the parser's
    semantic check (not the checksum) has to refuse a coder the version does not allow."""
    import zlib

    forged = bytearray(data)
    forged[4] = version
    crc_at = len(data) - len(payload) - 4
    forged[crc_at:crc_at + 4] = zlib.crc32(bytes(forged[crc_at + 4:]), zlib.crc32(bytes(forged[:crc_at]))).to_bytes(4, "little")
    return bytes(forged)


def _file_with_coder_3(codec, image):
    from aekit.codec.format import pack
    from aekit.export.entropy import CODER_HYPER

    q = codec.symbols(image[None])[0]
    return pack(codec.header(image.shape[0], image.shape[1], "RGB", CODER_HYPER), codec.em._encode_hyper(q)), q


def test_coder_3_files_are_version_3_and_decode(hp_model, rgb_photos):
    import aekit.codec.core as core
    from aekit.codec.format import LatentFormatError, parse

    codec = core.Codec(hp_model)
    data, q = _file_with_coder_3(codec, rgb_photos[1][:120, :200])
    assert data[4] == 3
    h, payload = parse(data)
    assert h.coder == 3
    dec = core.Decoder([hp_model])
    assert np.array_equal(dec.symbols(data)[1], q)
    x, _ = dec.decompress(data)
    assert x.shape == (120, 200, 3)
    with pytest.raises(LatentFormatError, match="coder 3 needs format version 3"):
        parse(_with_version(data, payload, 2))  # a version-2 file may not use coder 3


def test_compress_decodes_what_the_trained_model_decodes(hp_model, rgb_photos):
    """Through the whole codec (ONNX, symbols, coder, file) at the finest quality, the image is the
    PyTorch model's own reconstruction of the rounded latent (a seconds-old model: no quality floor)."""
    import aekit.codec.core as core
    from aekit.checkpoint import load_model
    from aekit.export.manifest import load_manifest

    m = load_manifest(hp_model)
    best = max(q["quality"] for q in m["entropy"]["qualities"])
    step = next(q["step"] for q in m["entropy"]["qualities"] if q["quality"] == best)
    image = rgb_photos[2][:240, :360]
    # the networks' output: no post-filter (on this seconds-old model it corrects a large colour error)
    data = core.Codec(hp_model, core.CodecConfig(quality=best, post_filter=False)).compress(image)
    x, h = core.Decoder([hp_model]).decompress(data)
    assert x.shape == image.shape and h.quality == best
    model, _ = load_model(m["training"]["checkpoint"])
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        y_hat = torch.clamp(torch.round(model.eval().encode(t) / step), -127, 127) * step
        ref = ((model.decode(y_hat).clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(x.astype(float) - ref).max() <= 2


def test_hyperprior_symbols_decode_bit_exactly_in_another_process_with_other_threads(hp_model, rgb_photos, tmp_path):
    """Tables come from integer arithmetic: another process with other BLAS/ORT threads decodes
    the same symbols (and the same ẑ -> table map)."""
    import aekit.codec.core as core

    data, q = _file_with_coder_3(core.Codec(hp_model), rgb_photos[0][:256, :256])
    (tmp_path / "x.ael").write_bytes(data)
    code = (
        "import numpy as np; import aekit.codec.core as c\n"
        f"d = c.Decoder([{str(hp_model)!r}], c.CodecConfig(threads=2))\n"
        f"np.save({str(tmp_path / 'q.npy')!r}, d.symbols(open({str(tmp_path / 'x.ael')!r}, 'rb').read())[1])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert np.array_equal(np.load(tmp_path / "q.npy"), q)


def test_a_changed_hyper_decoder_is_refused(hp_model, tmp_path):
    import shutil

    import aekit.codec.core as core

    bad = tmp_path / "m"
    shutil.copytree(hp_model, bad)
    with np.load(bad / "hyper_decoder.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["b2"] = arrays["b2"] + 1
    np.savez_compressed(bad / "hyper_decoder.npz", **arrays)
    with pytest.raises(core.CodecError, match="hyper_decoder.npz does not match the hash"):
        core.Codec(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    assert manifest["entropy"]["hyper"]["decoder_sha256"]  # the hash is in the id-pinned entropy JSON


def test_a_mean_free_hyper_decoder_loads_as_mu_zero():
    """Checkpoints of gdn-hp before the mean (last layer: ln σ only) load into the ln σ half, μ = 0."""
    from types import SimpleNamespace

    from aekit.train import Trainer

    cfg = ModelConfig(arch="gdn-hp", ratio=9, width=8)
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cy = cfg.latent_channels
    state["hyper_decoder.4.weight"] = torch.randn(cy, 8, 3, 3)
    state["hyper_decoder.4.bias"] = torch.randn(cy)
    Trainer._load_matching(SimpleNamespace(model=model), "old.pt", state, keep_prior=True)
    last = model.hyper_decoder[4]
    assert torch.equal(last.weight[cy:], state["hyper_decoder.4.weight"]) and not last.weight[:cy].any()
    assert torch.equal(last.bias[cy:], state["hyper_decoder.4.bias"]) and not last.bias[:cy].any()


def test_int8_export_keeps_the_hyperprior_files(hp_model, rgb_photos, tmp_path, photos_dir):
    """`aekit export --int8` of a gdn-hp model names the hyper files too, and its files decode."""
    import aekit.codec.core as core
    from aekit.export.manifest import load_manifest
    from aekit.export.onnx import export_model
    from aekit.export.quantize import Int8Config

    ckpt = load_manifest(hp_model)["training"]["checkpoint"]
    out = export_model(ckpt, tmp_path / "int8", speed=False,
                       int8=Int8Config(calib_data=str(photos_dir), max_loss_db=99, calib_images=4, check_images=2, side=96))
    m = load_manifest(out)
    assert m["files"]["decoder"] == "decoder_int8.onnx" and {"hyper_encoder", "hyper_decoder"} <= set(m["files"])
    x, _ = core.Decoder([out]).decompress(core.Codec(out).compress(rgb_photos[0][:96, :96]))
    assert x.shape == (96, 96, 3)


def test_fp16_stored_weights_halve_the_files_and_still_decode(hp_model, rgb_photos, tmp_path, capsys):
    """`aekit export --weights fp16`: the three networks store their large weights as fp16 (Casts to fp32 in
    the graph), the files shrink, the manifest records the measured change, and the files decode to images
    close to the fp32 export's (the tiny test model codes the same image within a few tenths of a dB)."""
    import onnx

    import aekit.codec.core as core
    from aekit.export.manifest import load_manifest
    from aekit.metrics import psnr

    ckpt = load_manifest(hp_model)["training"]["checkpoint"]
    out = tmp_path / "f16"
    assert main(["export", ckpt, "--out", str(out), "--weights", "fp16", "--no-speed"]) == 0
    m, m32 = load_manifest(out), load_manifest(hp_model)
    st = m["storage"]
    assert st["weights"] == "fp16" and st["files"]["decoder"]["tensors"] >= 1
    assert st["decoded_psnr_vs_fp32_db"] == "identical" or st["decoded_psnr_vs_fp32_db"] >= st["min_psnr_db"]
    assert m["model_id"] != m32["model_id"] and "storage" not in m32
    assert main(["info", str(out)]) == 0 and "stored as fp16 (computed in fp32)" in capsys.readouterr().out
    for k in ("encoder", "decoder", "hyper_encoder"):
        g = onnx.load(str(out / m["files"][k])).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer), k
        assert (out / m["files"][k]).stat().st_size < 0.75 * (hp_model / m32["files"][k]).stat().st_size, k
    img = rgb_photos[0][:96, :128]
    a, _ = core.Decoder([hp_model]).decompress(core.Codec(hp_model).compress(img))
    b, _ = core.Decoder([out]).decompress(core.Codec(out).compress(img))
    assert abs(psnr(img, a) - psnr(img, b)) < 0.3 and psnr(a, b) > 35


def test_int8_export_with_fp16_storage_halves_the_fp32_files(hp_model, rgb_photos, tmp_path, photos_dir, capsys):
    """`aekit export --int8 --int8-encoder --weights fp16`: the int8 networks are the model (its id), quantised
    from the fp32 ones before those (kept as fallbacks) and h_a are stored as fp16; the files decode."""
    import onnx

    import aekit.codec.core as core
    from aekit.export.manifest import load_manifest
    from aekit.export.onnx import export_model
    from aekit.export.quantize import Int8Config

    ckpt = load_manifest(hp_model)["training"]["checkpoint"]
    out = export_model(ckpt, tmp_path / "int8", speed=False, weights="fp16",
                       int8=Int8Config(encoder=True, calib_data=str(photos_dir), max_loss_db=99, calib_images=4,
                                       check_images=2, side=96))
    m, m32 = load_manifest(out), load_manifest(hp_model)
    assert (m["files"]["encoder"], m["files"]["decoder"]) == ("encoder_int8.onnx", "decoder_int8.onnx")
    assert m["storage"]["weights"] == "fp16" and "int8" in m
    for k in ("encoder_fp32", "decoder_fp32", "hyper_encoder"):
        g = onnx.load(str(out / m["files"][k])).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer), k
    assert (out / "hyper_encoder.onnx").stat().st_size < 0.75 * (hp_model / "hyper_encoder.onnx").stat().st_size
    x, _ = core.Decoder([out]).decompress(core.Codec(out).compress(rgb_photos[0][:96, :96]))
    assert x.shape == (96, 96, 3)
    from PIL import Image

    Image.fromarray(rgb_photos[0][:96, :96]).save(tmp_path / "im.png")
    assert main(["compress", str(tmp_path / "im.png"), "-m", str(out), "-o", str(tmp_path / "im.ael"), "--int8",
                 "--no-progress"]) == 0
    assert "ships no int8 encoder" not in capsys.readouterr().err  # its encoder is int8 already


def test_add_int8_works_on_an_fp16_stored_model(hp_model, rgb_photos, tmp_path, photos_dir, capsys):
    """`aekit add-int8` on a --weights fp16 export: the int8 networks are quantised from the fp32 values the
    stored weights compute with (export/storage.unstore_weights_fp16); the model id and storage stay, files
    made with the int8 encoder decode, and the stored graph and its unstored copy compute the same."""
    import shutil

    import onnx

    import aekit.codec.core as core
    from aekit.export.manifest import load_manifest
    from aekit.export.runtime import make_session
    from aekit.export.storage import unstore_weights_fp16
    from aekit.metrics import psnr

    ckpt = load_manifest(hp_model)["training"]["checkpoint"]
    out = tmp_path / "f16"
    assert main(["export", ckpt, "--out", str(out), "--weights", "fp16", "--no-speed"]) == 0
    before = load_manifest(out)
    shutil.copy(out / "decoder.onnx", tmp_path / "dec.onnx")
    assert unstore_weights_fp16(tmp_path / "dec.onnx") == before["storage"]["files"]["decoder"]["tensors"]
    g = onnx.load(str(tmp_path / "dec.onnx")).graph
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
    assert not any(n.op_type == "Cast" for n in g.node)
    y = np.random.default_rng(0).uniform(-3, 3, (1, before["latent_channels"], 4, 4)).astype(np.float32)
    cpu = ["CPUExecutionProvider"]
    assert np.array_equal(make_session(out / "decoder.onnx", cpu).run(None, {"y_hat": y})[0],
                          make_session(tmp_path / "dec.onnx", cpu).run(None, {"y_hat": y})[0])
    assert main(["add-int8", str(out), "--encoder", "--calib-data", str(photos_dir), "--int8-max-loss", "99"]) == 0
    m = load_manifest(out)
    assert m["model_id"] == before["model_id"] and m["storage"] == before["storage"]
    assert {"encoder_int8", "decoder_int8"} <= set(m["files"])
    img = rgb_photos[0][:96, :128]
    x8, _ = core.Decoder([out], core.CodecConfig(int8=True)).decompress(core.Codec(out, core.CodecConfig(int8=True)).compress(img))
    x32, _ = core.Decoder([out]).decompress(core.Codec(out).compress(img))
    assert x8.shape == img.shape and abs(psnr(img, x8) - psnr(img, x32)) < 1.0


def test_hyper_decoder_weights_are_stored_narrow_and_the_manifest_compact(hp_model):
    """hyper_decoder.npz keeps each array in the narrowest integer type that holds it (int16 for most of a
    trained photo model's weights) and the manifest is compact JSON; `aekit info --json` still prints it indented."""
    import json

    from aekit.export.manifest import load_manifest

    with np.load(hp_model / "hyper_decoder.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, a in arrays.items():
        narrower = {np.dtype(np.int32): np.int16, np.dtype(np.int64): np.int32}.get(a.dtype)
        assert a.dtype.kind == "i", k
        if narrower is not None:  # it did not fit the next narrower type
            info = np.iinfo(narrower)
            assert a.min() < info.min or a.max() > info.max, k
    assert all(a.dtype != np.int64 for k, a in arrays.items() if k.startswith("w"))
    text = (hp_model / "manifest.json").read_text()
    raw, m = json.loads(text), load_manifest(hp_model)
    assert text.count("\n") == 1 and {k: v for k, v in raw.items() if k != "entropy"} == \
        {k: v for k, v in m.items() if k[0] != "_" and k != "entropy"}


def test_manifests_name_the_shared_gaussian_tables_and_keep_their_id(hp_model, tmp_path):
    """A gdn-hp manifest names the runtime's shared Gaussian tables instead of holding them (format version 2);
    loading puts them back, so the id and the entropy model are those of the full manifest, which still loads
    (version 1); an unknown set or a changed hash is one ModelError line."""
    import json
    import shutil

    from aekit.export.manifest import SHARED_TABLES_VERSION, ModelError, load_manifest, shared_tables

    raw = json.loads((hp_model / "manifest.json").read_text())
    sha, tables = shared_tables("gaussian-v1")
    assert raw["format_version"] == SHARED_TABLES_VERSION
    assert raw["entropy"]["scale_tables"] == {"shared": "gaussian-v1", "sha256": sha}
    m = load_manifest(hp_model)
    assert m["entropy"]["scale_tables"] == tables and len(tables) == 4 * SCALE_LEVELS
    full = tmp_path / "full"
    shutil.copytree(hp_model, full)
    (full / "manifest.json").write_text(json.dumps({**raw, "format_version": 1,
                                                    "entropy": {**raw["entropy"], "scale_tables": tables}}))
    assert load_manifest(full)["model_id"] == m["model_id"] == raw["model_id"]
    for ref, says in (({"shared": "gaussian-v9", "sha256": sha}, "names the shared table set 'gaussian-v9'"),
                      ({"shared": "gaussian-v1", "sha256": "0" * 64}, "expects shared tables gaussian-v1 with sha256")):
        (full / "manifest.json").write_text(json.dumps({**raw, "entropy": {**raw["entropy"], "scale_tables": ref}}))
        with pytest.raises(ModelError, match=says):
            load_manifest(full)


def test_add_int8_variants_keep_the_model_and_decode_its_files(hp_model, rgb_photos, tmp_path, photos_dir, capsys):
    """`aekit add-int8 MODEL`: an int8 decoder beside the fp32 one, same model id; files written before it
    decode with either (`aekit decompress --int8` picks the int8 one), close to each other; a refused
    re-run leaves the previous variant in place and no temp folder."""
    import shutil

    import aekit.codec.core as core
    from aekit.export.manifest import load_manifest
    from aekit.metrics import psnr

    model = tmp_path / "hp"
    shutil.copytree(hp_model, model)
    img = rgb_photos[0][:96, :128]
    data = core.Codec(model).compress(img)
    before = load_manifest(model)
    plain = core.Codec(model, core.CodecConfig(int8=True))  # no variants yet: --int8 runs the fp32 networks
    assert (plain.rt.encoder_file, plain.rt.decoder_file) == ("encoder.onnx", "decoder.onnx") and plain.compress(img) == data
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "im.png")
    assert main(["compress", str(tmp_path / "im.png"), "-m", str(model), "-o", str(tmp_path / "im.ael"), "--int8",
                 "--no-progress"]) == 0
    assert "ships no int8 encoder" in capsys.readouterr().err  # said, not silent
    assert main(["add-int8", str(model), "--calib-data", str(photos_dir), "--int8-max-loss", "99"]) == 0
    assert "use them with `aekit decompress --int8`" in capsys.readouterr().out
    m = load_manifest(model)
    assert m["model_id"] == before["model_id"] and m["files"]["decoder"] == "decoder.onnx"
    assert m["files"]["decoder_int8"] == "decoder_int8.onnx" and m["int8_variants"]["speedup"]["decoder"] > 0
    assert core.Codec(model).compress(img) == data  # the encoder side is untouched
    a, _ = core.Decoder([model]).decompress(data)
    b, _ = core.Decoder([model], core.CodecConfig(int8=True)).decompress(data)
    assert core.Decoder([model], core.CodecConfig(int8=True)).runtime(m["model_id"]).decoder_file == "decoder_int8.onnx"
    assert a.shape == b.shape == img.shape and psnr(a, b) > 25 and not np.array_equal(a, b)
    src, out = tmp_path / "x.ael", tmp_path / "x.png"
    src.write_bytes(data)
    assert main(["decompress", str(src), "-o", str(out), "-m", str(model), "--int8", "--no-progress"]) == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out)), b)
    assert main(["add-int8", str(model), "--calib-data", str(photos_dir), "--int8-max-loss", "-5"]) == 2
    assert "over --int8-max-loss -5 dB" in capsys.readouterr().err  # refused: the previous variant stays
    assert load_manifest(model)["int8_variants"] == m["int8_variants"] and (model / "decoder_int8.onnx").is_file()
    assert not [p for p in model.iterdir() if p.name.startswith(".int8.")]
    # --encoder: an int8 encoder too, used by `aekit compress --int8` (other symbols; any file decodes anywhere)
    assert main(["add-int8", str(model), "--encoder", "--calib-data", str(photos_dir), "--int8-max-loss", "99"]) == 0
    assert "`aekit compress --int8` and `aekit decompress --int8`" in capsys.readouterr().out
    m = load_manifest(model)
    assert m["model_id"] == before["model_id"] and m["files"]["encoder_int8"] == "encoder_int8.onnx"
    assert m["int8_variants"]["parts"] == ["encoder", "decoder"] and "encoder" in m["int8_variants"]["speedup"]
    c8 = core.Codec(model, core.CodecConfig(int8=True))
    assert c8.rt.encoder_file == "encoder_int8.onnx" and core.Codec(model).compress(img) == data
    x8, _ = core.Decoder([model]).decompress(c8.compress(img))
    assert x8.shape == img.shape and abs(psnr(img, x8) - psnr(img, a)) < 1.0
    assert main(["add-int8", str(model), "--calib-data", str(photos_dir), "--int8-max-loss", "99"]) == 0
    assert "encoder_int8" not in load_manifest(model)["files"] and not (model / "encoder_int8.onnx").exists()


def test_add_int8_retries_with_the_latent_in_16_bits_then_the_encoder_output_layer_in_fp32(hp_model, tmp_path,
                                                                                         photos_dir, capsys,
                                                                                         monkeypatch):
    """int8 networks that fail the check are quantised once more with the latent in 16 bits on both sides (the
    decoder's input y_hat: input_tensors; the encoder's output y: output_tensors), then with the layer producing
    y kept in fp32 (output_layers: the Conv whose output is y); if that fails too, the error names the kept layer
    and the folder is unchanged."""
    import shutil

    import onnx

    import aekit.export.quantize as qz

    enc = onnx.load(str(hp_model / "encoder.onnx"))
    [last] = qz.output_layers(hp_model / "encoder.onnx")
    assert next(n for n in enc.graph.node if n.name == last).op_type == "Conv"
    assert next(n for n in enc.graph.node if n.name == last).output[0] == enc.graph.output[0].name
    model = tmp_path / "hp"
    shutil.copytree(hp_model, model)
    calls, real = [], qz.quantize_int8
    monkeypatch.setattr(qz, "quantize_int8", lambda src, dst, feeds, keep=None, wide=None:
                        calls.append((src.name, keep, wide)) or real(src, dst, feeds, keep, wide))
    assert qz.output_tensors(hp_model / "encoder.onnx") == ["y"]
    assert main(["add-int8", str(model), "--encoder", "--calib-data", str(photos_dir), "--int8-max-loss", "-5"]) == 2
    assert qz.input_tensors(hp_model / "decoder.onnx") == ["y_hat"]
    assert calls == [("decoder.onnx", None, None), ("encoder.onnx", None, None), ("decoder.onnx", None, ["y_hat"]),
                     ("encoder.onnx", None, ["y"]), ("encoder.onnx", [last], None)]
    err = capsys.readouterr().err
    assert f"the encoder's {last} kept in fp32" in err and "over --int8-max-loss -5 dB" in err
    assert (model / "manifest.json").read_bytes() == (hp_model / "manifest.json").read_bytes()
    assert not (model / "encoder_int8.onnx").exists()
    calls.clear()  # a decoder alone: retried with y_hat in 16 bits, then refused
    assert main(["add-int8", str(model), "--calib-data", str(photos_dir), "--int8-max-loss", "-5"]) == 2
    assert calls == [("decoder.onnx", None, None), ("decoder.onnx", None, ["y_hat"])]
    assert "int8 decoder loses" in capsys.readouterr().err and not (model / "decoder_int8.onnx").exists()


def test_an_encoder_with_y_in_16_bits_keeps_int8_weights_and_is_closer_to_fp32(hp_model, rgb_photos, tmp_path):
    """quantize_int8(..., wide=["y"]): the QuantizeLinear of y is uint16 (opset 21), every conv weight stays int8,
    and y comes out nearer the fp32 encoder's than with y in 8 bits (the coarse 8-bit output is what flips
    symbols at fine qualities)."""
    import onnx
    import onnxruntime as ort

    import aekit.export.quantize as qz
    from aekit.export.manifest import load_manifest
    from aekit.images import pad_to_multiple, to_model_input

    factor = load_manifest(hp_model)["factor"]
    xs = [pad_to_multiple(to_model_input(im[None, :128, :128]), factor) for im in rgb_photos[:3]]
    feeds = [{"x": x} for x in xs]
    q8 = qz.quantize_int8(hp_model / "encoder.onnx", tmp_path / "e8.onnx", feeds)
    q16 = qz.quantize_int8(hp_model / "encoder.onnx", tmp_path / "e16.onnx", feeds, wide=["y"])
    g = onnx.load(str(q16)).graph
    zp = {i.name: i.data_type for i in g.initializer}
    [qy] = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "y_QuantizeLinear_Input"]
    assert zp[qy.input[2]] == onnx.TensorProto.UINT16 and qy.domain == ""  # the standard op (opset 21)
    convs = [n for n in g.node if n.op_type == "Conv"]
    weights = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    assert convs and all(c.input[1] in weights for c in convs)  # every weight comes through a DequantizeLinear
    ref = ort.InferenceSession(str(hp_model / "encoder.onnx"), providers=["CPUExecutionProvider"])
    err = {}
    for name, path in (("8", q8), ("16", q16)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        err[name] = max(float(np.abs(sess.run(None, f)[0] - ref.run(None, f)[0]).max()) for f in feeds)
    assert err["16"] < err["8"]


def test_a_decoder_with_y_hat_in_16_bits_keeps_int8_weights_and_is_closer_to_fp32(hp_model, rgb_photos, tmp_path):
    """quantize_int8(decoder, wide=["y_hat"]): the QuantizeLinear of the input y_hat is uint16, every conv weight
    stays int8, and x_hat comes out nearer the fp32 decoder's than with y_hat in 8 bits (the 8-bit grid over
    y_hat's range is coarser than a fine quality's step)."""
    import onnx
    import onnxruntime as ort

    import aekit.export.quantize as qz
    from aekit.export.manifest import load_manifest
    from aekit.images import pad_to_multiple, to_model_input

    factor = load_manifest(hp_model)["factor"]
    enc = ort.InferenceSession(str(hp_model / "encoder.onnx"), providers=["CPUExecutionProvider"])
    ys = [enc.run(None, {"x": pad_to_multiple(to_model_input(im[None, :128, :128]), factor)})[0]
          for im in rgb_photos[:3]]
    feeds = [{"y_hat": np.round(y * 40) / 4} for y in ys]  # a wide range (as a fine quality's) in steps of 0.25
    q8 = qz.quantize_int8(hp_model / "decoder.onnx", tmp_path / "d8.onnx", feeds)
    q16 = qz.quantize_int8(hp_model / "decoder.onnx", tmp_path / "d16.onnx", feeds, wide=["y_hat"])
    g = onnx.load(str(q16)).graph
    zp = {i.name: i.data_type for i in g.initializer}
    [qy] = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "y_hat"]
    assert zp[qy.input[2]] == onnx.TensorProto.UINT16
    weights = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(c.input[1] in weights for c in convs)
    ref = ort.InferenceSession(str(hp_model / "decoder.onnx"), providers=["CPUExecutionProvider"])
    err = {}
    for name, path in (("8", q8), ("16", q16)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        err[name] = np.mean([float(np.abs(sess.run(None, f)[0] - ref.run(None, f)[0]).mean()) for f in feeds])
    assert err["16"] < err["8"]


def test_a_rerun_at_another_quality_redoes_the_files(hp_model, rgb_photos, tmp_path, capsys):
    """The quality step is part of a compress job's recipe: a rerun into the same folder with another
    --quality redoes every file (not 'skipped existing'), and a rerun with the same one skips them."""
    from PIL import Image

    from aekit.codec.format import parse

    src = tmp_path / "src"
    src.mkdir()
    for i, im in enumerate(rgb_photos[:2]):
        Image.fromarray(im[:128, :128]).save(src / f"{i}.png")
    out = tmp_path / "lat"
    assert main(["compress", str(src), "-m", str(hp_model), "-o", str(out), "--no-progress"]) == 0
    default = {p.name: parse(p.read_bytes())[0].quality for p in out.glob("*.ael")}
    other = str(2 if set(default.values()) == {1} else 1)
    capsys.readouterr()
    assert main(["compress", str(src), "-m", str(hp_model), "-o", str(out), "--quality", other, "--no-progress"]) == 0
    assert "compressed 2 files (redid 2 stale), skipped 0 existing" in capsys.readouterr().err
    assert {p.name: parse(p.read_bytes())[0].quality for p in out.glob("*.ael")} == {k: int(other) for k in default}
    assert main(["compress", str(src), "-m", str(hp_model), "-o", str(out), "--quality", other, "--no-progress"]) == 0
    assert "compressed 0 files, skipped 2 existing" in capsys.readouterr().err


def test_mean_offsets_find_a_channel_whose_mean_is_off(hp_model, rgb_photos, monkeypatch):
    """mean_offsets: symbols of one channel moved up by 6 against the hyperprior's base give that channel an
    offset of 6 and leave the others at 0; coder 4's file decodes them exactly and is smaller than coder 3's."""
    import aekit.codec.core as core
    from aekit.export.hyperprior import PRECISION, mean_offsets

    codec = core.Codec(hp_model)
    em = codec.em
    q = codec.symbols(rgb_photos[0][:192, :192][None])[0]
    z = em.hyper_symbols(q)
    table, base = em.decoder.tables(z, q.shape[1], q.shape[2], em.thresholds, em.step4)
    log2p = np.log2(em.scale_tables) - PRECISION
    q0 = np.clip(base.astype(np.int64) + 127, 0, 254).astype(np.uint8)  # every symbol at its predicted mean
    q0[2] = np.clip(q0[2].astype(np.int64) + 6, 0, 254)
    off = mean_offsets(q0, table, base, log2p)
    assert off[2] == 6 and not np.delete(off, 2).any()
    shifted = q0.copy()
    import aekit.export.hyperprior as hyperprior
    monkeypatch.setattr(hyperprior, "context_shifts", lambda *a, **k: None)  # coder 4, not 5
    coder, payload = em._encode_hyper_best(shifted)
    assert coder == 4 and len(payload) < len(em._encode_hyper(shifted))
    assert np.array_equal(em.decode(4, payload, shifted.shape), shifted)


def test_offsets_on_the_int8_base_clip_instead_of_wrapping():
    """The integer hyper decoder's base is int8 (±127, half the bytes of int16 on a 178 Mpx image); coder 4's
    offsets are summed in int16 and clipped, so 120 + 64 gives 127, not a wrapped −72; other channels untouched."""
    from aekit.export.hyperprior import apply_offsets

    base = np.array([[[120, -120]], [[5, 6]], [[-100, 100]]], dtype=np.int8)
    apply_offsets(base, np.array([64, 0, -64], dtype=np.int16))
    assert base.dtype == np.int8 and base.tolist() == [[[127, -56]], [[5, 6]], [[-127, 36]]]
    split = [np.array([[120, -120]], np.int8), np.array([[5, 6]], np.int8), np.array([[-100, 100]], np.int8)]
    apply_offsets(split, np.array([64, 0, -64], dtype=np.int16))  # the encoder's per-channel base
    assert [b.dtype for b in split] == [np.int8] * 3 and [b.tolist() for b in split] == [[[127, -56]], [[5, 6]], [[-127, 36]]]


def test_coder_4_files_are_version_4_decode_and_refuse_bad_offsets(hp_model, rgb_photos, monkeypatch):
    """Coder 4 (hyperprior with per-channel mean offsets): version-4 files that decode to the encoder's symbols;
    malformed offset lists and coder 4 in a version-3 header are one clean error each."""
    import aekit.codec.core as core
    import aekit.export.hyperprior as hyperprior
    from aekit.codec.format import LatentFormatError, parse
    from aekit.export.entropy import EntropyError

    codec = core.Codec(hp_model)
    image = rgb_photos[1][:150, :200]
    q = codec.symbols(image[None])[0]
    forced = np.zeros(q.shape[0], np.int16)
    forced[[0, 3]] = (2, -3)
    monkeypatch.setattr(hyperprior, "mean_offsets", lambda *a: forced.copy())
    monkeypatch.setattr(hyperprior, "context_shifts", lambda *a, **k: None)  # no spatial context (coder 5)
    coder, payload = codec.em._encode_hyper_best(q)
    assert coder == 4 and payload[:2] == (2).to_bytes(2, "little")
    data = codec.pack(q, 150, 200, "RGB")
    h, _ = parse(data)
    if h.coder == 4:  # zstd may still win on a tiny image; the payload itself is checked below anyway
        assert data[4] == 4 and np.array_equal(core.Decoder([hp_model]).symbols(data)[1], q)
    assert np.array_equal(codec.em.decode(4, payload, q.shape), q)
    for bad in (payload[:1], (99).to_bytes(2, "little") + payload[2:],
                payload[:2] + payload[5:8] + payload[2:5] + payload[8:],  # channels not ascending
                payload[:4] + b"\x00" + payload[5:]):  # a zero offset
        with pytest.raises(EntropyError):
            codec.em.decode(4, bad, q.shape)
    from aekit.codec.format import pack

    data = pack(codec.header(150, 200, "RGB", 4), payload)
    assert data[4] == 4
    with pytest.raises(LatentFormatError, match="coder 4 needs format version 4"):
        parse(_with_version(data, payload, 3))


def test_context_classes_count_and_sign_the_known_neighbours():
    """Coder 5's passes and classes: pass 0 (even, even), 1 (odd, odd), 2 (the rest); an element's class is
    n(n + 1)/2 + (s + n)/2 over its four direct (or diagonal) known neighbours, n = those with a non-zero
    residual k − base and s the sum of their signs; unknown neighbours do not count."""
    from aekit.export.hyperprior import context_classes, context_passes

    passes = context_passes(3, 4)
    assert passes.tolist() == [[0, 2, 0, 2], [2, 1, 2, 1], [0, 2, 0, 2]]
    k = np.array([[[5, 9, -2, 0], [0, 1, 0, 4], [0, 0, 3, 0]]], dtype=np.int16)
    base = np.array([[[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]], dtype=np.int8)  # (1, 1): residual 0
    direct = context_classes(k, base, passes < 2, diagonal=False)
    # (0, 1): (0, 0) +5, (0, 2) −2, (1, 1) 0 -> n = 2, s = 0 -> 4;  (1, 0): (0, 0) +5, (2, 0) 0, (1, 1) 0 -> 2
    # (1, 2): (0, 2) −2, (2, 2) +3, (1, 1) 0, (1, 3) +4 -> n = 3, s = +1 -> 6 + 2 = 8
    assert [int(direct[0, r, c]) for r, c in ((0, 1), (1, 0), (1, 2))] == [4, 2, 8]
    diagonal = context_classes(k, base, passes < 1, diagonal=True)
    # (1, 1): (0, 0) +5, (0, 2) −2, (2, 0) 0, (2, 2) +3 -> n = 3, s = +1 -> 8; (1, 3): (0, 2) −2, (2, 2) +3 -> 4
    assert int(diagonal[0, 1, 1]) == 8 and int(diagonal[0, 1, 3]) == 4
    assert int(context_classes(k, base, passes < 0, diagonal=False)[0, 1, 2]) == 0  # nothing known: class 0


def test_shifted_tables_follow_the_hyperprior_rule():
    """t' = 4·clip(j + Δj, 0, 63) + (m' mod 4), b' = clip(floor(m'/4), ±127) with m' = 4b + φ + Δm: floors and
    clips like the integer hyper decoder's own table choice."""
    from aekit.export.hyperprior import shifted_tables

    table = np.array([4 * 10 + 1, 4 * 0 + 0, 4 * 63 + 3, 4 * 5 + 2], dtype=np.uint8)
    base = np.array([3, -127, 127, -1], dtype=np.int8)
    shift = np.array([[2, 3], [-4, -1], [5, 1], [0, -7]], dtype=np.int16)
    t, b = shifted_tables(table, base, shift)
    # m' = 13 + 3 = 16; −508 − 1 = −509; 511 + 1 = 512; −4 + 2 − 7 = −9
    assert t.tolist() == [4 * 12 + 0, 4 * 0 + 3, 4 * 63 + 0, 4 * 5 + 3]
    assert b.tolist() == [4, -127, 127, -3]


def test_coder_5_files_are_version_5_decode_and_refuse_bad_context(hp_model, rgb_photos, monkeypatch):
    """Coder 5 (spatial context): forced shifts give a version-5 file that decodes to the encoder's symbols;
    a mask naming no class or class 30, a listed class with no shift, a cut-off list and coder 5 in a version-4
    header are one clean error each."""
    import aekit.codec.core as core
    import aekit.export.hyperprior as hyperprior
    from aekit.codec.format import LatentFormatError, pack, parse
    from aekit.export.entropy import EntropyError

    codec = core.Codec(hp_model)
    image = rgb_photos[1][:160, :200]
    q = codec.symbols(image[None])[0]
    forced = np.zeros((30, 2), np.int16)
    forced[0] = (-2, 0)  # pass 1, class 0
    forced[19] = (3, -1)  # pass 2, class 4
    monkeypatch.setattr(hyperprior, "context_shifts", lambda *a, **k: forced.copy())
    coder, payload = codec.em._encode_hyper_best(q)
    assert coder == 5
    n_off = int.from_bytes(payload[:2], "little")
    at = 2 + 3 * n_off  # the context mask
    assert payload[at:at + 8] == (1 | 1 << 19).to_bytes(4, "little") + bytes([254, 0, 3, 255])
    assert np.array_equal(codec.em.decode(5, payload, q.shape), q)
    data = pack(codec.header(160, 200, "RGB", 5), payload)
    assert data[4] == 5 and parse(data)[0].coder == 5
    assert np.array_equal(core.Decoder([hp_model]).symbols(data)[1], q)
    for bad in (payload[:at + 3],  # cut off in the mask
                payload[:at] + b"\0\0\0\0" + payload[at + 4:],  # no class
                payload[:at] + (1 << 30).to_bytes(4, "little") + payload[at + 4:],  # class 30
                payload[:at + 4] + b"\0\0" + payload[at + 6:],  # a listed class without a shift
                payload[:at + 6]):  # the second class's shift cut off
        with pytest.raises(EntropyError):
            codec.em.decode(5, bad, q.shape)
    with pytest.raises(LatentFormatError, match="coder 5 needs format version 5"):
        parse(_with_version(data, payload, 4))


def test_coder_5_shrinks_real_photos_and_decodes_in_another_process(tmp_path):
    """The shipped photos-r9 at its default quality on held-out-like photos (scikit-image's astronaut and
    coffee): the spatial context is chosen, no file grows and together they shrink by over 1 %; another process with
    other BLAS/onnxruntime threads decodes the same symbols."""
    import skimage.data

    import aekit.codec.core as core
    import aekit.export.hyperprior as hyperprior
    from aekit.codec.format import parse
    from aekit.export.manifest import resolve_model

    model = resolve_model("photos-r9")
    codec = core.Codec(model, core.CodecConfig(workers=1, spatial_context=False))  # coders 7/8: test_codec_spatial.py
    sizes = []
    for i, image in enumerate((skimage.data.astronaut(), skimage.data.coffee())):
        q = codec.symbols(image[None])[0]
        coder, payload = codec.em._encode_hyper_best(q)
        limit = hyperprior.CONTEXT_MAX_SYMBOLS
        try:
            hyperprior.CONTEXT_MAX_SYMBOLS = 0  # coder 3/4 as before coder 5
            old_coder, old = codec.em._encode_hyper_best(q)
        finally:
            hyperprior.CONTEXT_MAX_SYMBOLS = limit
        assert coder == 5 and old_coder in (3, 4) and len(payload) <= len(old)
        sizes.append((len(payload), len(old)))
        data = codec.compress(image)
        assert parse(data)[0].coder in (5, 6) and len(parse(data)[1]) <= len(payload)  # coder 6: its channel context
        (tmp_path / f"{i}.ael").write_bytes(data)
        np.save(tmp_path / f"{i}.npy", q)
    assert sum(new for new, _ in sizes) < 0.99 * sum(old for _, old in sizes)  # 1.5 % and 1.3 % when written
    code = ("import numpy as np; import aekit.codec.core as c\n"
            f"d = c.Decoder([{str(model)!r}], c.CodecConfig(threads=2))\n"
            "for i in range(2):\n"
            f"    q = d.symbols(open({str(tmp_path)!r} + f'/{{i}}.ael', 'rb').read())[1]\n"
            f"    assert np.array_equal(q, np.load({str(tmp_path)!r} + f'/{{i}}.npy')), i\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
