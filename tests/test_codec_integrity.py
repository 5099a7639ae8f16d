"""Writer and reader agree; models are what their id says; tiny inputs cannot claim huge work."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from aekit.codec.format import QUANT_TANH_UNIFORM, LatentFormatError, LatentHeader, pack, parse
from aekit.export.entropy import EntropyError, EntropyModel, integer_table
from aekit.export.manifest import ModelError, load_manifest


def test_writer_refuses_what_the_reader_would_refuse():
    wide = LatentHeader("00" * 8, 1, 1_100_000, "L", 4, (4, 1, 275_000), 256, QUANT_TANH_UNIFORM, 0)
    with pytest.raises(LatentFormatError, match="implausible image size"):
        pack(wide, b"")
    ok = LatentHeader("00" * 8, 5, 7, "L", 4, (4, 2, 2), 256, QUANT_TANH_UNIFORM, 0)
    assert parse(pack(ok, bytes(16)))[0] == ok


def test_certain_symbols_code_to_an_empty_ans_payload_that_decodes():
    counts = np.zeros(4, dtype=np.int64)
    counts[0] = 10**12  # a flat black image: every symbol the most probable one
    em = EntropyModel(np.stack([integer_table(counts)]), 4)
    q = np.zeros((1, 64, 64), dtype=np.uint8)
    coder, payload = em.encode(q)
    assert np.array_equal(em.decode(coder, payload, q.shape), q)


def test_zstd_payload_too_short_for_its_declared_size_is_refused():
    from aekit.export.entropy import CODER_ZSTD, _zstd_compress

    em = EntropyModel(np.stack([integer_table(np.ones(256, dtype=np.int64))]), 256)
    payload = _zstd_compress(bytes(1 << 16))
    with pytest.raises(EntropyError, match="too short"):
        em.decode(CODER_ZSTD, payload, (1, 1 << 14, 1 << 14))  # 268 M symbols from a few bytes


def test_a_model_whose_files_do_not_match_its_id_is_refused(tiny_model, tmp_path):
    src = tiny_model(1, 4)
    bad = tmp_path / "swapped"
    shutil.copytree(src, bad)
    enc, dec = (bad / "encoder.onnx").read_bytes(), (bad / "decoder.onnx").read_bytes()
    (bad / "encoder.onnx").write_bytes(dec)
    (bad / "decoder.onnx").write_bytes(enc)
    with pytest.raises(ModelError, match="does not match its files"):
        load_manifest(bad)


@pytest.mark.parametrize("field,value,match", [
    ("factor", "4", "factor"),
    ("channels", 2, "channels"),
    ("files", {"encoder": "../../etc/passwd", "decoder": "decoder.onnx"}, "inside the model folder"),
    ("latent_hist", [[1] * 3], "latent_hist"),
    ("ratio", 9, "do not give ratio"),
])
def test_absurd_manifest_values_get_one_line(tiny_model, tmp_path, field, value, match):
    bad = tmp_path / "m"
    shutil.copytree(tiny_model(1, 4), bad)
    m = json.loads((bad / "manifest.json").read_text())
    m[field] = value
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match=match) as e:
        load_manifest(bad)
    assert "\n" not in str(e.value) and "manifest.json" in str(e.value)


def test_compress_summary_compares_with_the_source_files_and_warns_when_larger():
    from aekit.codec.jobs import JobReport

    r = JobReport("compressed", ok=2, bytes_in=1000, bytes_out=2300, pixel_bytes=30000)
    assert "2.30x LARGER than the source files" in r.summary()
    assert r.warnings() and "larger than the source files" in r.warnings()[0]
    r = JobReport("compressed", ok=2, bytes_in=3000, bytes_out=1000, pixel_bytes=30000)
    assert "3.00x smaller than the source files" in r.summary() and not r.warnings()
    assert math.isclose(r.pixel_bytes / r.bytes_out, 30.0)


def test_export_refuses_non_finite_weights(train_tiny, tmp_path):
    import torch

    from aekit.checkpoint import load_checkpoint, save_checkpoint
    from aekit.export.onnx import ExportError, export_model

    ckpt = load_checkpoint(train_tiny(1, 4) / "best.pt")
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    with pytest.raises(ExportError, match="non-finite weights"):
        export_model(tmp_path / "nan.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fuzz_of_real_files_finds_no_crash_hang_or_silent_corruption(tmp_path):
    from aekit.bench.fuzz_latents import main as fuzz

    assert fuzz(["--mutants", "200", "--out", str(tmp_path / "f.json")]) == 0
    counts = json.loads((tmp_path / "f.json").read_text())["counts"]
    assert counts["tried"] == 200 and counts["clean_errors"] > 150
