"""CPU runtime of the codec (issue 17): byte-bounded batch and tile planning, the memory gate,
parallel folder jobs and tiles that change nothing in the bytes, session caching, fast defaults.

No test here is timed: the figures live in bench/RESULTS.md (python -m aekit.bench.cpu_scaling).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aekit.codec.core import CodecConfig, Codec, Decoder, plan_batch, plan_tile
from aekit.codec.jobs import JobConfig, compress_tree, decompress_tree, encode_image_file
from aekit.export.manifest import resolve_model
from aekit.export.runtime import ActivationEstimate, MemoryGate, Runtime, cached_session, session_options


@pytest.fixture(scope="module")
def photos_r9() -> Path:
    return resolve_model("photos-r9")


@pytest.fixture(scope="module")
def fmnist_r4() -> Path:
    return resolve_model("fmnist-r4")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # probe estimates stay in the test


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("fixed", [0, 5 << 20, 300 << 20])
@pytest.mark.parametrize("per_pixel", [32.0, 544.0, 1056.0])
@pytest.mark.parametrize("side", [28, 96, 512, 2048])
def test_batch_plan_never_exceeds_the_byte_budget(fixed, per_pixel, side):
    est, px = ActivationEstimate(fixed, per_pixel), side * side
    for budget in (64 << 20, 384 << 20, 1 << 30):
        n = plan_batch(est, px, budget, max_batch=64)
        assert 1 <= n <= 64
        if n > 1:  # a batch of several fits; only a single image may exceed (the tiler's business)
            assert est.bytes(n * px) <= budget
        if n < 64:  # and it is the largest that fits
            assert n == 1 or est.bytes((n + 1) * px) > budget
    assert plan_batch(None, px, 1, max_batch=64) == 64  # GPU: no host estimate, the configured batch


@pytest.mark.parametrize("factor,overlap", [(4, 6), (12, 6), (16, 4)])
def test_tile_plan_fits_the_call_budget_context_included(factor, overlap):
    est = ActivationEstimate(4 << 20, 1056.0)
    for budget in (128 << 20, 384 << 20, 1 << 30):
        t = plan_tile(est, factor, overlap, 512, budget)
        assert 1 <= t <= 512 // factor
        side = (t + 2 * overlap) * factor  # what one tile's call computes
        assert t == 1 or est.bytes(side * side) <= budget
        assert t == 512 // factor or est.bytes(((t + 1 + 2 * overlap) * factor) ** 2) > budget


def test_codec_sizes_batches_and_tiles_of_a_real_model_to_its_budget(photos_r9):
    """photos-r9: the estimate is in the range measured as peak RSS (1.05 KB/px decoding), a 512²
    photo is one call, a 50 Mpx one is tiled with tiles that fit a quarter of the budget."""
    cfg = CodecConfig(device="cpu", memory_mb=768)
    codec, dec = Codec(photos_r9, cfg), Decoder([photos_r9], cfg)
    enc_est, dec_est = codec.rt.estimate("encoder"), dec.runtime(codec.model_id).estimate("decoder")
    assert 300 < enc_est.per_pixel < 3000 and 500 < dec_est.per_pixel < 3000
    assert not codec.tiled(512, 512) and codec.batch_limit(512, 512) == 1
    assert enc_est.bytes(codec.batch_limit(64, 64) * 64 * 64) <= cfg.call_budget
    assert codec.tiled(7072, 7072)  # 50 Mpx
    t = codec.tile_latent()
    assert enc_est.bytes(((t + 2 * codec.overlap) * codec.factor) ** 2) <= cfg.tile_budget
    # beside a 178 Mpx photo held in Pillow's memory (712 MB) the tiles get a quarter of a quarter of the budget
    assert cfg.tile_budget_beside(0) == cfg.tile_budget and cfg.tile_budget_beside(712 << 20) == cfg.tile_budget // 4
    assert cfg.tile_budget_beside(200 << 20) == (cfg.budget - (200 << 20)) // 4  # 50 Mpx: a little smaller
    big = codec.tile_latent(712 << 20)
    assert big < t and enc_est.bytes(((big + 2 * codec.overlap) * codec.factor) ** 2) <= cfg.tile_budget // 4
    small = CodecConfig(device="cpu", memory_mb=64)  # a 512² image no longer fits one call: tiled
    assert Codec(photos_r9, small).tiled(512, 512)


def test_memory_gate_holds_the_sum_of_running_calls_under_the_budget():
    gate, peak, lock = MemoryGate(100), [0], threading.Lock()

    def call(n: int) -> None:
        with gate.hold(n):
            with lock:
                peak[0] = max(peak[0], gate.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=call, args=(n,)) for n in (60, 30, 50, 20, 500, 40) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 100 and gate.used == 0  # the 500-byte call ran alone, clipped to the budget


def test_parallel_folder_jobs_write_the_same_bytes_ledger_and_failure_lines(fmnist_r4, gray_dir, photos_r9,
                                                                            photos_dir, tmp_path):
    src = tmp_path / "src"
    for i, p in enumerate(sorted((gray_dir / "test").rglob("*.png"))[:40]):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f"d{i % 3}" / p.name)
    (src / "d1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (src / "d0" / "text.jpg").write_text("not a JPEG")
    shutil.copy(photos_dir / "astronaut.png", src / "d2" / "colour.png")  # RGB into a gray model: refused
    runs = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        cfg = CodecConfig(device="cpu", workers=workers, batch_size=4)
        rep = compress_tree(src, out / "lat", Codec(fmnist_r4, cfg), JobConfig(workers=workers, progress=False))
        drep = decompress_tree(out / "lat", out / "dec", Decoder([fmnist_r4], cfg),
                               JobConfig(workers=workers, progress=False))
        ledger = [ln.replace(str(out), "OUT") for ln in (out / "lat" / ".aekit-outputs.jsonl").read_text().splitlines()]
        runs[workers] = (tree_hash(out / "lat"), tree_hash(out / "dec"), rep.failed, drep.failed, ledger, rep.ok)
    assert runs[1][5] == 40 and len(runs[1][2]) == 3
    assert runs[1] == runs[2] == runs[3]
    assert [ln.split(":")[0] for ln in runs[1][2]] == sorted(ln.split(":")[0] for ln in runs[1][2])  # source order


def test_parallel_tiles_give_the_serial_tiles_bytes_and_pixels(photos_r9, rgb_photos):
    image = rgb_photos[0][:300, :280]
    one = CodecConfig(device="cpu", workers=1, full_res_max_pixels=0, tile_px=96)
    two = CodecConfig(device="cpu", workers=2, full_res_max_pixels=0, tile_px=96)
    a, b = Codec(photos_r9, one).compress(image), Codec(photos_r9, two).compress(image)
    assert a == b
    da, _ = Decoder([photos_r9], one).decompress(a)
    db, _ = Decoder([photos_r9], two).decompress(a)
    assert np.array_equal(da, db) and da.shape == image.shape


def test_sessions_load_once_per_process_with_one_quiet_thread(fmnist_r4):
    r1, r2 = Runtime(fmnist_r4, device="cpu"), Runtime(fmnist_r4, device="cpu")
    assert r1.encoder is r2.encoder and r1.decoder is r2.decoder
    assert Runtime(fmnist_r4, device="cpu", threads=2).encoder is not r1.encoder
    onnx = Path(fmnist_r4) / "encoder.onnx"
    assert cached_session(onnx, ["CPUExecutionProvider"]) is r1.encoder
    opts = session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1 and not opts.enable_mem_pattern
    from aekit.codec import api

    assert api.cached_codec(fmnist_r4) is api.cached_codec(fmnist_r4)
    assert api.cached_decoder([fmnist_r4]) is api.cached_decoder([fmnist_r4])


def test_fast_defaults_keep_pixels_and_decode(fmnist_r4, gray_dir, tmp_path):
    image = np.asarray(Image.open(sorted((gray_dir / "test").rglob("*.png"))[0]))[:, :, None]
    fast, small = encode_image_file(image, Path("x.png")), encode_image_file(image, Path("x.png"), png_level=9)
    for data in (fast, small):
        (tmp_path / "x.png").write_bytes(data)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png"))[:, :, None], image)
    noise = np.random.default_rng(0).integers(0, 256, (56, 56, 1), dtype=np.uint8)
    for smallest in (False, True):  # the zstd trial at either level still gives a file that decodes
        data = Codec(fmnist_r4, CodecConfig(device="cpu", smallest=smallest)).compress(noise)
        assert Decoder([fmnist_r4]).decompress(data)[0].shape == noise.shape


def test_tile_context_is_the_receptive_field_and_tiles_are_exact(rgb_photos):
    """photos-r9 (f = 12): the encoder reaches 18 px, the decoder 1.5 latent units, so 2 units of context per
    tile side; tiles then give the full image's symbols and pixels. (The factor-16 photos-r4 shipped until
    2026-12-01 also differed with 1 unit; photos-r9's outer taps are too weak to flip a symbol of this image.
    A rescaled model's Resize is added to its source's reach: tests/test_rescale.py.)"""
    from aekit.export.runtime import context_reach

    model = resolve_model("photos-r9")
    assert context_reach(model / "encoder.onnx") == (18.0, 12.0)
    assert context_reach(model / "decoder.onnx") == (1.5, 1 / 12)
    image = np.ascontiguousarray(np.tile(rgb_photos[0], (2, 2, 1))[:640, :640])
    full_cfg = CodecConfig(device="cpu", full_res_max_pixels=1 << 30, memory_mb=1 << 14)
    full = Codec(model, full_cfg)
    q = full.symbols(image[None])
    x = Decoder([model], full_cfg).decompress(full.compress(image))[0]
    tiled = Codec(model, CodecConfig(device="cpu", full_res_max_pixels=1, tile_px=256))
    assert tiled.overlap == 2 and tiled.tiled(640, 640)
    data = tiled.compress(image)
    assert np.array_equal(tiled.symbols(image[None]), q)
    assert np.array_equal(Decoder([model], CodecConfig(device="cpu", full_res_max_pixels=1, tile_px=256)).decompress(data)[0], x)


def test_context_reach_gives_up_on_ops_it_does_not_know(tmp_path):
    """A graph with a spatially global op (GlobalAveragePool) has no finite reach: None (tiles then use the
    fixed FALLBACK_OVERLAP); conv + DepthToSpace arithmetic as documented."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from aekit.export.runtime import context_reach

    def save(nodes, inits, name):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(tmp_path / name))
        return tmp_path / name

    w = {"w": np.zeros((16, 4, 3, 3), np.float32)}
    conv = helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], strides=[2, 2])
    assert context_reach(save([conv, helper.make_node("DepthToSpace", ["h"], ["y"], blocksize=2)], w, "a.onnx")) == (1.0, 1.0)
    assert context_reach(save([conv, helper.make_node("GlobalAveragePool", ["h"], ["y"])], w, "b.onnx")) is None


def test_tile_context_comes_from_the_manifest_and_needs_no_onnx(tmp_path, monkeypatch):
    """The runtime reads the export's "tile_context"; without it it computes the reach with the onnx
    package, and where that is not installed (onnx is not a runtime dependency) it keeps FALLBACK_OVERLAP."""
    import json
    import shutil
    import sys

    from aekit.codec.core import FALLBACK_OVERLAP

    model = tmp_path / "r9"
    shutil.copytree(resolve_model("photos-r9"), model)
    m = json.loads((model / "manifest.json").read_text())
    assert m["tile_context"]["encoder"] == 2 and m["tile_context"]["decoder"] == 2
    m["tile_context"] = {"encoder": 3, "decoder": 5}
    (model / "manifest.json").write_text(json.dumps(m))
    assert Codec(model, CodecConfig(device="cpu")).overlap == 3
    assert Decoder([model]).runtime(m["model_id"]).context("decoder", FALLBACK_OVERLAP) == 5
    del m["tile_context"]
    (model / "manifest.json").write_text(json.dumps(m))
    assert Codec(model, CodecConfig(device="cpu")).overlap == 2  # computed from the graph
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    assert Codec(model, CodecConfig(device="cpu")).overlap == FALLBACK_OVERLAP
