"""aekit rescale (aekit.export.rescale): a shipped rate-distortion model on a resampled pixel grid for another
ratio. The new graphs are the source's with Pillow's bicubic resampling around them, the ratio rule holds
exactly, tiles stay exact, and the files code and decode like any model's."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from aekit.cli import main
from aekit.codec.core import Codec, CodecConfig, Decoder
from aekit.codec.format import read_header
from aekit.export.manifest import ModelError, load_manifest, resolve_model
from aekit.export.rescale import implied_lambda, rescale_model, rescaled_factor


@pytest.fixture(scope="module")
def r4(tmp_path_factory):
    """photos-r9 (48 channels at H/12, 1/9) rescaled to 1/4 (48 channels at H/8); its default quality chosen on
    3 crops of 192 px of the bundled photos (the recorded models used 8 of 256 px of the training photos)."""
    out = tmp_path_factory.mktemp("rescale") / "r9-at-r4"
    rescale_model("photos-r9", out, 4, check_images=3, check_side=192)
    return out


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[40:360, 96:400])  # 320 x 304: not a multiple of 8 or 12


def _pil_resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float (C, H, W) -> (C, h, w) with Pillow's float bicubic (Keys a = −0.5, antialiased when shrinking)."""
    return np.stack([np.asarray(Image.fromarray(c.astype(np.float32), "F").resize(size, Image.BICUBIC)) for c in a])


def test_the_ratio_rule_gives_the_factor_or_names_the_ratios_it_can():
    m = load_manifest(resolve_model("photos-r9"))
    assert rescaled_factor(m, 4) == 8 and rescaled_factor(m, 9) == 12 and rescaled_factor(m, 1) == 4
    with pytest.raises(ModelError, match=r"cannot give ratio 5: .*ratios it can give: 1, 4, 9, 16"):
        rescaled_factor(m, 5)


def test_implied_lambda_is_where_the_default_minimises_d_plus_lambda_r():
    """points {q: (D, R)}: q2 is optimal for λ in [(0.5−0.3)/(4−2), (0.9−0.5)/(2−1)] = [0.1, 0.4] -> √0.04 = 0.2;
    a default that is optimal for no λ (q3 here is dominated: more D than q2 at more R) gives None."""
    pts = {1: (0.9, 1.0), 2: (0.5, 2.0), 3: (0.6, 3.0), 4: (0.3, 4.0)}
    assert implied_lambda(pts, 2) == pytest.approx(0.2)
    assert implied_lambda(pts, 3) is None
    assert implied_lambda(pts, 4) == pytest.approx(0.05)  # the finest: optimal for any λ up to 0.1; half of that
    lam = implied_lambda(pts, 2)
    assert min(pts, key=lambda q: pts[q][0] + lam * pts[q][1]) == 2


def test_the_default_quality_is_chosen_again_at_the_sources_lambda(r4):
    """The finer grid spends more bits per pixel at each step: at the source's λ (recovered from its own
    default) the new default is a coarser step, and the checks are the new model's figures."""
    m, src = load_manifest(r4), load_manifest(resolve_model("photos-r9"))
    dq = m["rescaled"]["default_quality"]
    assert dq["source_default"] == src["entropy"]["default_quality"] == 10 and dq["images"] == 3
    assert 0.004 < dq["lambda"] < 0.02  # photos-r9 was trained at rate weight 0.01
    assert m["entropy"]["default_quality"] == dq["quality"] < 10
    checks = [e["check"] for e in m["entropy"]["qualities"]]
    assert all(c["images"] == 3 for c in checks) and [c["bpp"] for c in checks] == sorted(c["bpp"] for c in checks)


def test_manifest_files_and_id(r4):
    src, m = load_manifest(resolve_model("photos-r9")), load_manifest(r4)
    assert (m["ratio"], m["factor"], m["latent_channels"], m["padding"]["multiple"]) == (4, 8, 48, 8)
    assert m["factor"] ** 2 * m["channels"] == m["ratio"] * m["latent_channels"]  # exactly 1/4
    assert m["model_id"] != src["model_id"] and m["rescaled"]["from_model_id"] == src["model_id"]
    assert m["rescaled"]["scale"] == 1.5 and m["latent"] == src["latent"]
    for key in ("scale_tables", "hyper"):  # the coder's tables are the source's; only the default and checks differ
        assert m["entropy"][key] == src["entropy"][key]
    assert [{k: v for k, v in e.items() if k != "check"} for e in m["entropy"]["qualities"]] == \
        [{k: v for k, v in e.items() if k != "check"} for e in src["entropy"]["qualities"]]
    for k in ("hyper_encoder", "hyper_decoder"):  # latents in, latents out: the same bytes
        assert hashlib.sha256((r4 / m["files"][k]).read_bytes()).digest() == \
            hashlib.sha256((resolve_model("photos-r9") / src["files"][k]).read_bytes()).digest()
    assert "int8_variants" not in m and "decoder_int8" not in m["files"] and "speed" not in m
    assert m["tile_context"] == {"encoder": 2, "decoder": 2}  # (18 / 1.5 + 2) / 8 and 1.5 + 2·1.5 / 12, rounded up
    assert oct((r4).stat().st_mode & 0o777) != oct(0o700)


def test_graphs_are_the_source_networks_with_pillows_bicubic_around_them(r4, photo):
    """encoder = source encoder ∘ bicubic ×1.5; decoder = antialiased bicubic ×2/3 ∘ source decoder."""
    import onnxruntime as ort

    from aekit.images import to_model_input

    src = resolve_model("photos-r9")
    run = lambda d, f, feed: ort.InferenceSession(str(d / f), providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
    x = to_model_input(photo[None, :256, :240])  # multiples of 8
    up = _pil_resize(x[0], (360, 384))[None]
    y_ref, y = run(src, "encoder.onnx", {"x": up}), run(r4, "encoder.onnx", {"x": x})
    assert y.shape == (1, 48, 32, 30)
    assert np.abs(y - y_ref).max() < 1e-3 * max(1.0, np.abs(y_ref).max())
    y_hat = np.rint(y_ref).astype(np.float32)
    x_hat = run(r4, "decoder.onnx", {"y_hat": y_hat})
    ref = _pil_resize(run(src, "decoder.onnx", {"y_hat": y_hat})[0], (240, 256))[None]
    assert x_hat.shape == (1, 3, 256, 240) and np.abs(x_hat - ref).max() < 1e-4


def test_files_code_at_the_new_ratio_and_beat_the_source_at_its_quality(r4, photo):
    """More latent elements per pixel, the same step: a larger file (≤ raw / 4 + header), a better picture."""
    h, w = photo.shape[:2]
    psnr = {}
    for model in (resolve_model("photos-r9"), r4):
        data = Codec(model, CodecConfig(device="cpu", quality=10)).compress(photo)
        header = read_header(data)
        x = Decoder([model]).decompress(data)[0]
        assert x.shape == photo.shape
        psnr[model.name] = 10 * np.log10(255 ** 2 / np.mean((x.astype(float) - photo) ** 2))
        if model == r4:
            assert (header.model_id, header.quality) == (load_manifest(r4)["model_id"], 10)
            assert Codec(r4, CodecConfig(device="cpu")).symbols(photo[None]).shape == (1, 48, -(-h // 8), -(-w // 8))
            assert len(data) <= h * w * 3 // 4 + 64
    assert psnr[r4.name] > psnr["photos-r9"] + 1.0, psnr


def test_tiles_give_the_whole_images_symbols_and_pixels(r4, rgb_photos):
    """The Resize's taps are inside the tile context: tiles of 256 px with 2 latent units of context code and
    decode exactly as the whole image."""
    image = np.ascontiguousarray(np.tile(rgb_photos[0], (2, 2, 1))[:520, :520])
    full_cfg = CodecConfig(device="cpu", full_res_max_pixels=1 << 30, memory_mb=1 << 14)
    full = Codec(r4, full_cfg)
    q = full.symbols(image[None])
    x = Decoder([r4], full_cfg).decompress(full.compress(image))[0]
    tiled = Codec(r4, CodecConfig(device="cpu", full_res_max_pixels=1, tile_px=256))
    assert tiled.overlap == 2 and tiled.tiled(520, 520)
    assert np.array_equal(tiled.symbols(image[None]), q)
    data = tiled.compress(image)
    assert np.array_equal(Decoder([r4], CodecConfig(device="cpu", full_res_max_pixels=1, tile_px=256)).decompress(data)[0], x)


def test_a_gray_factorized_prior_model_shrinks_to_1_9(tmp_path):
    """fmnist-r4 (gray, 4 channels at H/4, factorized prior) at 1/9: 4 channels at H/6 of the image, the image
    shrunk by 2/3 (antialiased) before the encoder; its files code at 1/9 and decode to the input's size."""
    import skimage.data

    m = rescale_model("fmnist-r4", tmp_path / "r9", 9, check_images=2, check_side=56)
    assert (m["factor"], m["ratio"], m["rescaled"]["scale"]) == (6, 9, 4 / 6)
    assert "antialiased" in m["rescaled"]["encoder"] and "antialiased" not in m["rescaled"]["decoder"]
    image = np.ascontiguousarray(skimage.data.camera()[200:256, 200:256, None])
    data = Codec(tmp_path / "r9", CodecConfig(device="cpu")).compress(image)
    assert read_header(data).latent_shape == (4, 10, 10)
    x = Decoder([tmp_path / "r9"]).decompress(data)[0]
    assert x.shape == image.shape and 10 * np.log10(255 ** 2 / np.mean((x.astype(float) - image) ** 2)) > 15


def test_cli_errors_name_the_problem_and_leave_nothing(tmp_path, capsys):
    assert main(["rescale", "photos-r9", "--ratio", "5", "--out", str(tmp_path / "a")]) == 2
    assert "cannot give ratio 5" in capsys.readouterr().err
    assert main(["rescale", "photos-r9", "--ratio", "9", "--out", str(tmp_path / "a")]) == 2
    assert "already has ratio 9" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    assert main(["rescale", "photos-r9", "--ratio", "4", "--out", str(tmp_path / "b")]) == 2
    assert "exists (use --force" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no half-written or temporary folder
    assert main(["rescale", "photos-r9", "--ratio", "4", "--out", str(tmp_path / "c"), "--check-data",
                 str(tmp_path / "nothing")]) == 2
    assert "nothing: no readable image to choose the default quality with" in capsys.readouterr().err
    assert main(["rescale", "photos-r9", "--ratio", "4", "--out", str(tmp_path / "b"), "--force",
                 "--check-images", "1"]) == 0
    assert "ratio 1/4 (48 channels at H/8)" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["ratio"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
