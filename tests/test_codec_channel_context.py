"""The channel-conditional context (Minnen & Singh 2020): training, integer network, coder 6, format v6."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from aekit.cli import main


def _reference_run(spec, arrays, k, mu, ls, sym, f, step4):
    """codec/FORMAT.md's coder-6 network, written out tap by tap in Python integers (int64, floor division)."""
    cy, h, w = mu.shape
    per = cy // spec["slices"]
    cap = (1 << 26) - 1

    def rnd(v, s):  # floor((v + 2^(s-1)) / 2^s), s >= 0
        return (v + ((1 << s) >> 1)) >> s

    inp = [np.clip(rnd(mu, f - 16), -cap, cap), np.clip(rnd(ls, f - 16), -cap, cap)]
    if k:
        inp.append(np.clip(sym[:k * per].astype(np.int64) * step4 * (1 << 14), -cap, cap))
    a = np.concatenate(inp)
    layers = spec["layers"][k]
    for i, lay in enumerate(layers):
        wq, bq, s = arrays[f"s{k}w{i}"].astype(np.int64), arrays[f"s{k}b{i}"].astype(np.int64), lay["shift"]
        pad = np.pad(a, ((0, 0), (1, 1), (1, 1)))
        acc = np.zeros((wq.shape[0], h, w), np.int64) + bq[:, None, None]
        for dy in range(3):
            for dx in range(3):
                acc += np.einsum("oc,chw->ohw", wq[:, :, dy, dx], pad[:, dy:dy + h, dx:dx + w])
        if i < len(layers) - 1:
            a = np.where(acc >= 0, rnd(acc, s), (acc + (1 << (s + 1))) >> (s + 2))
        else:
            a = rnd(acc, s)
        a = np.clip(a, -cap, cap)
    return a


def _small_spec(seed=0, cy=8, slices=2, width=6):
    from aekit.export.context import integer_context
    from aekit.models.context import ChannelContext

    torch.manual_seed(seed)
    ctx = ChannelContext(cy, slices, width)
    for p in ctx.parameters():
        torch.nn.init.normal_(p, std=0.3)
    specs, arrays = integer_context(ctx)
    return ctx, {"channels": cy, "slices": slices, "layers": specs}, arrays


def test_integer_context_is_the_documented_integer_network_and_tracks_the_float_one():
    from aekit.export.context import IntegerChannelContext

    ctx, spec, arrays = _small_spec()
    rng = np.random.default_rng(0)
    f, step4, cy, h, w = 31, 6, 8, 5, 7  # Δ = 1.5
    mu = rng.integers(-(3 << f), 3 << f, (cy, h, w))
    ls = rng.integers(-(2 << f), 2 << f, (cy, h, w))
    sym = rng.integers(-6, 7, (cy, h, w)).astype(np.int16)
    ic = IntegerChannelContext(spec, arrays)
    for k in range(2):
        got = ic._run(k, mu, ls, sym, f, step4)
        assert np.array_equal(got, _reference_run(spec, arrays, k, mu, ls, sym, f, step4))
    with torch.no_grad():  # the float network on the same inputs: within rounding of 2^-16 per layer
        t = [torch.from_numpy(v.astype(np.float64) / 2.0 ** f).float()[None] for v in (mu, ls)]
        y_hat = torch.from_numpy(sym.astype(np.float32) * step4 / 4)[None]
        mu2, ls2 = ctx(y_hat, *t)
    got = ic._run(1, mu, ls, sym, f, step4).astype(np.float64) / 2.0 ** 16
    assert np.abs(got[:4] - (mu2 - t[0])[0, 4:].numpy()).max() < 1e-2
    assert np.abs(got[4:] - (ls2 - t[1])[0, 4:].numpy()).max() < 1e-2


def test_integer_context_refuses_malformed_weights():
    from aekit.export.context import IntegerChannelContext
    from aekit.export.entropy import EntropyError

    _, spec, arrays = _small_spec()
    bad = dict(arrays, s1w0=arrays["s1w0"][:, :-1])  # slice 1 must read 2·c_y + c_y/S channels
    with pytest.raises(EntropyError, match="channel context: malformed"):
        IntegerChannelContext(spec, bad)
    huge = dict(arrays, s0w1=np.full_like(arrays["s0w1"], 1 << 30, dtype=np.int64))
    with pytest.raises(EntropyError, match="outside the contract"):
        IntegerChannelContext(spec, huge)
    with pytest.raises(EntropyError, match="slices"):
        IntegerChannelContext({**spec, "slices": 3}, arrays)


@pytest.fixture(scope="module")
def ctx_model(hp_model, photos_dir, tmp_path_factory):
    """hp_model with a channel context trained for a few steps on the bundled photos (aekit fit-context,
    aekit add-context): (model folder, context.pt)."""
    m = json.loads((hp_model / "manifest.json").read_text())
    run = tmp_path_factory.mktemp("ctx-run")
    assert main(["fit-context", m["training"]["checkpoint"], str(photos_dir), "--out", str(run), "--steps", "30",
                 "--width", "12", "--slices", "4", "--crop", "12", "--val-data", str(photos_dir)]) == 0
    out = tmp_path_factory.mktemp("ctx-model") / "m"
    shutil.copytree(hp_model, out)
    assert main(["add-context", str(out), str(run / "context.pt"), "--images", str(photos_dir)]) == 0
    return out, run / "context.pt"


def test_fit_context_resumes_and_records_its_validation_bits(ctx_model, hp_model, photos_dir, tmp_path, capsys):
    m = json.loads((hp_model / "manifest.json").read_text())
    saved = torch.load(ctx_model[1], weights_only=True)
    assert saved["config"] == {"channels": m["latent_channels"], "slices": 4, "width": 12, "slope": 0.25}
    bpp = saved["fit"]["val_bpp"]
    assert set(bpp) == {"4.0", "2.0", "1.0"} and all(r["context"] > 0 and r["hyperprior"] > 0 for r in bpp.values())
    run = tmp_path / "run"
    shutil.copytree(ctx_model[1].parent, run)
    assert main(["fit-context", m["training"]["checkpoint"], str(photos_dir), "--out", str(run), "--steps", "34",
                 "--width", "12", "--slices", "4", "--crop", "12", "--resume"]) == 0
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [30, 34] and rows[1]["time_s"] > rows[0]["time_s"]
    capsys.readouterr()
    assert main(["fit-context", m["training"]["checkpoint"], str(photos_dir), "--out", str(tmp_path / "x"),
                 "--slices", "5"]) != 0
    assert "5 slices do not split 48 latent channels" in capsys.readouterr().err


def test_add_context_keeps_the_model_id_and_records_its_check(hp_model, ctx_model):
    from aekit.export.manifest import load_manifest

    old, new = load_manifest(hp_model), load_manifest(ctx_model[0])
    assert new["model_id"] == old["model_id"]
    entry = new["channel_context"]
    assert new["files"]["channel_context"] == "channel_context.npz" and len(entry["sha256"]) == 64
    assert [r["quality"] for r in entry["check"]["qualities"]] == [q["quality"] for q in old["entropy"]["qualities"]]
    assert all(r["with_context"] <= r["bytes"] for r in entry["check"]["qualities"])


def test_add_context_refuses_other_models_and_other_files(ctx_model, tmp_path, train_tiny, capsys):
    from aekit.export.onnx import export_model

    tiny = export_model(train_tiny(3, 4) / "best.pt", tmp_path / "tiny", speed=False)
    for argv, says in (([str(tiny), str(ctx_model[1])], "has no hyperprior"),
                       ([str(ctx_model[0]), str(ctx_model[1])], "already has a channel context"),
                       ([str(ctx_model[0]), str(ctx_model[0] / "manifest.json"), "--force"], "not a channel context")):
        capsys.readouterr()
        assert main(["add-context", *argv]) != 0
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err


def _coder_6_file(codec, image):
    from aekit.codec.format import pack
    from aekit.export.entropy import CODER_CHANNEL_CONTEXT

    q = codec.symbols(image[None])[0]
    payload = codec.em._encode_context(q)
    return pack(codec.header(image.shape[0], image.shape[1], "RGB", CODER_CHANNEL_CONTEXT), payload), q, payload


def test_coder_6_files_are_version_6_and_decode_here_and_in_another_process(ctx_model, rgb_photos, tmp_path):
    import aekit.codec.core as core
    from aekit.codec.format import LatentFormatError, parse
    from test_codec_hyperprior import _with_version  # the version byte set, the CRC recomputed

    codec = core.Codec(ctx_model[0])
    data, q, payload = _coder_6_file(codec, rgb_photos[0][:200, :232])
    assert data[4] == 6 and parse(data)[0].coder == 6
    assert payload[:4] == bytes.fromhex(json.loads((ctx_model[0] / "manifest.json").read_text())
                                        ["channel_context"]["sha256"])[:4]
    assert np.array_equal(core.Decoder([ctx_model[0]]).symbols(data)[1], q)
    x, _ = core.Decoder([ctx_model[0]]).decompress(data)
    assert x.shape == (200, 232, 3)
    with pytest.raises(LatentFormatError, match="coder 6 needs format version 6"):
        parse(_with_version(data, payload, 5))
    (tmp_path / "x.ael").write_bytes(data)
    code = ("import numpy as np; import aekit.codec.core as c\n"
            f"d = c.Decoder([{str(ctx_model[0])!r}], c.CodecConfig(threads=2))\n"
            f"np.save({str(tmp_path / 'q.npy')!r}, d.symbols(open({str(tmp_path / 'x.ael')!r}, 'rb').read())[1])\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert np.array_equal(np.load(tmp_path / "q.npy"), q)


def test_coder_6_refuses_a_folder_without_or_with_another_context(ctx_model, hp_model, rgb_photos, tmp_path):
    import aekit.codec.core as core
    from aekit.export.entropy import EntropyError

    codec = core.Codec(ctx_model[0])
    data, q, payload = _coder_6_file(codec, rgb_photos[1][:96, :120])
    with pytest.raises(core.CodecError, match="x.ael: .*channel context [0-9a-f]{8}, which this model folder does not have"):
        core.Decoder([hp_model]).symbols(data, "x.ael")
    with pytest.raises(EntropyError, match="coded with channel context 00000000; this model folder has"):
        codec.em.decode(6, b"\0\0\0\0" + payload[4:], q.shape)
    at = 6 + 3 * int.from_bytes(payload[4:6], "little")  # coder 6's class mask, after the id and the offsets
    for bad in (payload[:4], payload[:-4], payload + b"\0\0\0\0", payload[:9], payload[:at + 2],
                payload[:at] + (1 << 30).to_bytes(4, "little") + payload[at + 4:],  # class 30
                payload[:4] + (10 ** 4).to_bytes(2, "little") + payload[6:]):  # more offsets than channels
        with pytest.raises(EntropyError):
            codec.em.decode(6, bad, q.shape)
    other = tmp_path / "m"
    shutil.copytree(ctx_model[0], other)
    with np.load(other / "channel_context.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["s0b2"] = arrays["s0b2"] + 1
    np.savez_compressed(other / "channel_context.npz", **arrays)
    with pytest.raises(core.CodecError, match="channel_context.npz does not match the hash"):
        core.Codec(other)


def test_compress_keeps_the_smaller_of_coder_5_and_coder_6(ctx_model, rgb_photos, monkeypatch):
    """The writer codes both and keeps the smaller payload; latents over CONTEXT_MAX_SYMBOLS keep coder 3/4
    (coders 7/8 off: tests/test_codec_spatial.py has them)."""
    import aekit.codec.core as core
    import aekit.export.entropy as entropy
    import aekit.export.hyperprior as hyperprior
    from aekit.codec.format import parse

    best = max(q["quality"] for q in json.loads((ctx_model[0] / "manifest.json").read_text())["entropy"]["qualities"])
    # no post-filter either: on this seconds-old model it corrects a large colour error (a version-8 file)
    codec = core.Codec(ctx_model[0], core.CodecConfig(quality=best, spatial_context=False, post_filter=False))
    image = rgb_photos[2][:240, :300]
    q = codec.symbols(image[None])[0]
    z, table, base = codec.em._side_for_coding(q, False)  # the ẑ and tables RDOQ chose q under, as compress uses them
    c5, p5 = codec.em._encode_hyper_best(q, (z, table, base))
    sizes = {c5: len(p5), 6: len(codec.em._encode_context(q, z))}
    h, payload = parse(codec.compress(image))
    assert len(payload) <= min(sizes.values())  # (zstd may win on a seconds-old model)
    monkeypatch.setattr(entropy, "_zstd_compress", lambda raw, level: bytes(len(raw) + 1))  # zstd never wins
    h, payload = parse(codec.compress(image))
    assert len(payload) == min(sizes.values()) and h.coder == min(sizes, key=sizes.get)
    monkeypatch.setattr(type(codec.em), "_encode_hyper_best", lambda self, q, side=None: (3, bytes(q.size - 1)))
    data = codec.compress(image)
    h, payload = parse(data)
    assert h.coder == 6 and len(payload) == sizes[6] and data[4] == 6
    monkeypatch.setattr(hyperprior, "CONTEXT_MAX_SYMBOLS", 0)
    assert parse(codec.compress(image))[0].coder == 3  # (the patched coder 3/4/5 payload; coder 6 not tried)


def test_the_shipped_photos_r9_context_shrinks_real_photos_and_decodes_in_another_process(tmp_path):
    """photos-r9's channel context at its default quality on scikit-image's astronaut and coffee: compress picks
    coder 6, smaller than coder 5 by over 2 % together; another process with other threads decodes the symbols
    (coders 7/8 off)."""
    import skimage.data

    import aekit.codec.core as core
    from aekit.codec.format import parse
    from aekit.export.manifest import resolve_model

    model = resolve_model("photos-r9")
    codec = core.Codec(model, core.CodecConfig(workers=1, spatial_context=False, post_filter=False))
    assert codec.em.context is not None
    new = old = 0
    for i, image in enumerate((skimage.data.astronaut(), skimage.data.coffee())):
        q = codec.symbols(image[None])[0]
        z, table, base = codec.em._side_for_coding(q, False)
        old += len(codec.em._encode_hyper_best(q, (z, table, base))[1])
        codec.em._rdoq_side.clear()
        data = codec.compress(image)
        h, payload = parse(data)
        assert h.coder == 6 and data[4] == 6
        new += len(payload)
        (tmp_path / f"{i}.ael").write_bytes(data)
        np.save(tmp_path / f"{i}.npy", q)
    assert new < 0.98 * old, (new, old)
    code = ("import numpy as np; import aekit.codec.core as c\n"
            f"d = c.Decoder([{str(model)!r}], c.CodecConfig(threads=2))\n"
            "for i in range(2):\n"
            f"    q = d.symbols(open({str(tmp_path)!r} + f'/{{i}}.ael', 'rb').read())[1]\n"
            f"    assert np.array_equal(q, np.load({str(tmp_path)!r} + f'/{{i}}.npy')), i\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_evaluate_decodes_each_model_with_its_own_folder_when_two_share_an_id(ctx_model, hp_model, rgb_photos, tmp_path,
                                                                             monkeypatch):
    """The folder with the context and the one without have the same model id; evaluate codes with each and must
    decode each file with the folder that wrote it (a search by id alone would find the folder without the context)."""
    from PIL import Image

    import aekit.export.hyperprior as hyperprior

    smallest = hyperprior._smallest
    monkeypatch.setattr(hyperprior, "_smallest", lambda q, own, *a: (6, own[6](q)) if 6 in own else smallest(q, own, *a))

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(rgb_photos[0][:96, :96]).save(src / "a.png")
    best = max(q["quality"] for q in json.loads((hp_model / "manifest.json").read_text())["entropy"]["qualities"])
    assert main(["evaluate", str(src), "-m", str(hp_model), "-m", str(ctx_model[0]), "--quality", str(best),
                 "-o", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["models"]
    assert len(rows) == 2 and rows[0]["model_id"] == rows[1]["model_id"] and rows[0]["psnr"] == rows[1]["psnr"]


def test_compress_no_channel_context_writes_coder_5(tmp_path):
    """`aekit compress --no-channel-context` (faster) writes the coder-5 file, with --no-spatial-context too (the
    reader before version 7); the default the smaller coder-8 one, --no-spatial-context alone coder 6."""
    import skimage.data
    from PIL import Image

    from aekit.codec.format import parse

    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "-m", "photos-r9", "-o", str(tmp_path / "a.ael")]) == 0
    assert main(["compress", str(tmp_path / "a.png"), "-m", "photos-r9", "-o", str(tmp_path / "b.ael"),
                 "--no-channel-context", "--no-spatial-context"]) == 0
    assert main(["compress", str(tmp_path / "a.png"), "-m", "photos-r9", "-o", str(tmp_path / "c.ael"),
                 "--no-spatial-context"]) == 0
    (h8, p8), (h5, p5), (h6, p6) = (parse((tmp_path / n).read_bytes()) for n in ("a.ael", "b.ael", "c.ael"))
    assert (h8.coder, h6.coder, h5.coder) == (8, 6, 5) and len(p8) < len(p6) < len(p5)
    assert main(["decompress", str(tmp_path / "a.ael"), "-o", str(tmp_path / "a8.png")]) == 0
    assert main(["decompress", str(tmp_path / "b.ael"), "-o", str(tmp_path / "b.png")]) == 0


def test_rescale_carries_the_channel_context(ctx_model, rgb_photos, tmp_path):
    """aekit rescale copies channel_context.npz (it reads latents only) and the rescaled model codes coder 6."""
    import aekit.codec.core as core
    from aekit.codec.format import parse

    out = tmp_path / "r4"
    assert main(["rescale", str(ctx_model[0]), "--ratio", "4", "--out", str(out), "--check-images", "2"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["files"]["channel_context"] == "channel_context.npz" and m["ratio"] == 4
    assert m["channel_context"]["sha256"] == json.loads((ctx_model[0] / "manifest.json").read_text())["channel_context"]["sha256"]
    codec = core.Codec(out)
    data, q, _ = _coder_6_file(codec, rgb_photos[2][:128, :160])
    assert parse(data)[0].coder == 6 and np.array_equal(core.Decoder([out]).symbols(data)[1], q)
