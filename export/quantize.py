"""int8 export: onnxruntime static QDQ quantisation with a PSNR check against the fp32 export.

    aekit export runs/NAME/best.pt --out models/NAME-int8 --int8 [--int8-encoder] [--calib-data DIR]
Weights are quantised per output channel (int8, symmetric), activations per tensor (uint8) with
ranges calibrated (min/max) on training images; the model is refused if its mean PSNR on images
not used for calibration falls more than `max_loss_db` below the fp32 export's. An int8 encoder
that fails that check is tried once more with its output layer (the one producing y) in fp32, and
the model is refused only if that also fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aekit.images import ImageError, from_model_output, load_image, pad_to_multiple, scan_folder, to_model_input

INT8_MAX_LOSS_DB = 0.3  # default --int8-max-loss: mean PSNR the int8 model may lose vs fp32, dB


class Int8Error(Exception):
    """The int8 model failed its quality check (or could not be calibrated); nothing was written."""


@dataclass
class Int8Config:
    """What `aekit export --int8` quantises and how it is checked."""

    encoder: bool = False  # also quantise the encoder (symbols then depend on the machine's int8 kernels)
    calib_data: str | None = None  # image folder for calibration and the check (default: the run's data)
    check_data: str | None = None  # separate image folder for the check (default: images of calib_data not calibrated on)
    max_loss_db: float = INT8_MAX_LOSS_DB  # refuse above this mean PSNR loss vs fp32 on the check images
    calib_images: int = 32  # images used to calibrate activation ranges
    check_images: int = 16  # other images for the PSNR check
    side: int = 256  # centre crops of at most side x side px at native resolution


def split_images(folder: str | Path, channels: int, cfg: Int8Config,
                 check_folder: str | Path | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration and check images, uint8 (H, W, C) centre crops of at most cfg.side px: from
    check_folder when given, else every few files of an evenly spaced pick of folder (disjoint sets)."""
    if check_folder is not None:
        calib = centre_crops(folder, channels, cfg.calib_images, cfg.side)
        check = centre_crops(check_folder, channels, cfg.check_images, cfg.side)
        if not calib or not check:
            raise Int8Error(f"{folder if not calib else check_folder}: no usable image for int8 "
                            f"{'calibration' if not calib else 'check'}")
        return calib, check
    n = cfg.calib_images + cfg.check_images
    images = centre_crops(folder, channels, n, cfg.side)
    if len(images) < 2:
        raise Int8Error(f"{folder}: {len(images)} usable image(s); int8 needs at least 2 (calibration and check): "
                        "name a folder of training images with --calib-data")
    k = max(1, len(images) * cfg.check_images // n)  # every (n/check)-th image is held out for the check
    step = max(2, len(images) // k)
    check = images[step - 1::step][:k]
    calib = [im for i, im in enumerate(images) if (i + 1) % step or i // step >= k]
    return calib, check


def centre_crops(folder: str | Path, channels: int, n: int, side: int) -> list[np.ndarray]:
    """Up to n evenly spaced images of folder (unreadable ones skipped), centre-cropped to at most
    side x side: uint8 (h, w, channels) arrays at native resolution."""
    samples = scan_folder(folder)[0]
    images = []
    for smp in samples[:: max(1, len(samples) // n)][:n]:
        try:
            im = load_image(smp.path, channels)[0]
        except ImageError:
            continue
        h, w = im.shape[:2]
        t, l = max(0, (h - side) // 2), max(0, (w - side) // 2)
        images.append(np.ascontiguousarray(im[t:t + side, l:l + side]))
    return images


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)

    def rewind(self) -> None:  # not needed: one pass of min/max calibration
        pass


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], keep_fp32: list[str] | None = None,
                  wide: list[str] | None = None) -> Path:
    """Static QDQ quantisation of src to dst: per-channel int8 weights in the 7-bit range (reduce_range),
    uint8 activations (min/max calibrated on feeds: the inputs the network really receives); the nodes
    named in keep_fp32 stay fp32 (their inputs are dequantised, their outputs not quantised); the tensors
    named in wide (an encoder's output y, a decoder's input y_hat) are quantised to uint16 instead of uint8
    (onnxruntime's TensorQuantOverrides; the graph is raised to opset 21, whose QuantizeLinear takes 16 bits).
    Returns dst.

    Why 7 bits: on x86 CPUs without VNNI (AVX2 or AVX-512 alone) onnxruntime's u8s8 kernels add pairs
    of uint8 × int8 products in int16 (vpmaddubsw), which saturates with full-range 8-bit weights
    (onnxruntime's quantization docs). Measured on an AVX2-only EPYC: photos-r9's 8-bit variants lost
    3.3 dB at q12; re-quantised with reduce_range they lose 0.18 dB, as the 8-bit ones did on a VNNI CPU."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root, quiet = logging.getLogger(), logging.NullHandler()  # its pre-processing advice goes through
    was = root.disabled                                          # logging.warning (root, basicConfig)
    root.disabled = True
    root.addHandler(quiet)
    try:
        quantize_static(str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(keep_fp32 or []),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       **({"TensorQuantOverrides": {t: [{"quant_type": QuantType.QUInt16}]
                                                                    for t in wide}} if wide else {})})
    finally:
        root.disabled = was
        root.removeHandler(quiet)
    return dst


def _run(sess: Any, name: str, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {name: x})[0]


PASS_THROUGH = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast"}


def output_tensors(path: Path) -> list[str]:
    """Names of a network's graph outputs (an encoder's: ["y"])."""
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def input_tensors(path: Path) -> list[str]:
    """Names of a network's graph inputs that are not initializers (a decoder's: ["y_hat"])."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    return [i.name for i in g.input if i.name not in weights]


def output_layers(path: Path) -> list[str]:
    """Names of the nodes that compute a network's outputs: for each graph output, its producer, or
    through layout-only ops (Transpose, Reshape, ...) the node before them. For an encoder these are the
    layers that produce y (a conv for the shipped architectures)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    names = []
    for out in g.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in PASS_THROUGH and node.input and node.input[0] in producer:
            node = producer[node.input[0]]
        if node is not None and node.name and node.name not in names:
            names.append(node.name)
    return names


def int8_export(tmp: Path, images_calib: list[np.ndarray], images_check: list[np.ndarray], factor: int,
                quantiser: Any, cfg: Int8Config, speed: Callable[[Path, Path, Path, Path], dict[str, float]]) -> dict[str, Any]:
    """Write decoder_int8.onnx (and encoder_int8.onnx with cfg.encoder) into tmp beside the fp32
    files, check quality and return the manifest's "int8" section; Int8Error if the loss is too large.

    quantiser: the model's default `Quantiser` (y -> uint8 symbols -> y_hat), so the decoder is
    calibrated on the latents it will really decode. speed(enc32, dec32, enc8, dec8) -> speed-ups.
    """
    from aekit.export.speed import one_thread_session
    from aekit.metrics import psnr

    enc32 = one_thread_session(tmp / "encoder.onnx")
    xs = [pad_to_multiple(to_model_input(im[None]), factor) for im in images_calib]
    ys = [quantiser.dequantise(quantiser.quantise(_run(enc32, "x", x))) for x in xs]
    dfeeds = [{"y_hat": y} for y in ys]  # the decoder's calibration inputs
    quantize_int8(tmp / "decoder.onnx", tmp / "decoder_int8.onnx", dfeeds)
    dec32 = one_thread_session(tmp / "decoder.onnx")

    def check(enc8: Any) -> tuple[float, list[float], list[float], list[float], int]:
        dec8 = one_thread_session(tmp / "decoder_int8.onnx")
        p32, p8, p_vs, changed = [], [], [], 0
        for im in images_check:
            h, w = im.shape[:2]
            x = pad_to_multiple(to_model_input(im[None]), factor)
            q32, q8 = quantiser.quantise(_run(enc32, "x", x)), quantiser.quantise(_run(enc8, "x", x))
            changed += int((q32 != q8).sum())
            r32 = from_model_output(_run(dec32, "y_hat", quantiser.dequantise(q32)))[0, :h, :w]
            r8 = from_model_output(_run(dec8, "y_hat", quantiser.dequantise(q8)))[0, :h, :w]
            p32.append(psnr(im, r32))
            p8.append(psnr(im, r8))
            p_vs.append(psnr(r32, r8))
        return float(np.mean(p32) - np.mean(p8)), p32, p8, p_vs, changed

    keep: list[str] = []
    wide: list[str] = []
    dwide: list[str] = []
    feeds = [{"x": x} for x in xs]  # the encoder's calibration inputs, for each quantisation below
    if cfg.encoder:
        quantize_int8(tmp / "encoder.onnx", tmp / "encoder_int8.onnx", feeds)
    loss, p32, p8, p_vs, changed = check(one_thread_session(tmp / "encoder_int8.onnx") if cfg.encoder else enc32)
    if not loss <= cfg.max_loss_db:
        # mixed precision, first: the latent itself in 16 bits, on both sides (every weight stays int8). The
        # encoder's 8-bit per-tensor output spans y's whole range in 255 steps, coarser than a fine quality's step
        # Δ, so it flips symbols; the decoder's 8-bit input rounds ŷ = q·Δ to that grid too (Δ of 0.5 beside a
        # range of about ±60); 65,535 steps do neither (photos-r9 stage 12: 0.50 dB lost in 8 bits, 0.15 dB with y
        # in 16, 0.16 dB with the layer in fp32, which doubles the file; photos-r4-hq stage 4's decoder: 0.30 dB
        # in 8 bits: RESULTS.md, sessions 30-31).
        dwide = input_tensors(tmp / "decoder.onnx")
        quantize_int8(tmp / "decoder.onnx", tmp / "decoder_int8.onnx", dfeeds, wide=dwide)
        if cfg.encoder:
            wide = output_tensors(tmp / "encoder.onnx")
            quantize_int8(tmp / "encoder.onnx", tmp / "encoder_int8.onnx", feeds, wide=wide)
        loss, p32, p8, p_vs, changed = check(one_thread_session(tmp / "encoder_int8.onnx") if cfg.encoder else enc32)
    if cfg.encoder and not loss <= cfg.max_loss_db:
        # then the layer that produces y in fp32 (small: at y's resolution); the rest of the encoder stays int8.
        keep, wide = output_layers(tmp / "encoder.onnx"), []
        if keep:  # (an unnamed output layer: nothing to keep, the same quantisation would fail again)
            quantize_int8(tmp / "encoder.onnx", tmp / "encoder_int8.onnx", feeds, keep)
            loss, p32, p8, p_vs, changed = check(one_thread_session(tmp / "encoder_int8.onnx"))
    parts = "encoder and decoder" if cfg.encoder else "decoder"
    if not loss <= cfg.max_loss_db:
        raise Int8Error(f"int8 {parts} loses {loss:.2f} dB PSNR on {len(images_check)} held-out images (fp32 "
                        f"{np.mean(p32):.2f} dB, int8 {np.mean(p8):.2f} dB"
                        + (f", the encoder's {', '.join(keep)} kept in fp32" if keep else "")
                        + f"), over --int8-max-loss {cfg.max_loss_db:g} dB; "
                        "the model was not written (export without --int8, or allow a larger loss)")
    return {"parts": ["encoder", "decoder"] if cfg.encoder else ["decoder"],
            "scheme": "onnxruntime static QDQ: int8 weights per output channel (symmetric, 7-bit range: "
                      "reduce_range), uint8 activations per tensor, min/max calibration"
                      + (f"; the encoder's output layer ({', '.join(keep)}) in fp32" if keep else "")
                      + (f"; the encoder's output ({', '.join(wide)}) in uint16" if wide else "")
                      + (f"; the decoder's input ({', '.join(dwide)}) in uint16" if dwide else ""),
            **({"encoder_fp32_nodes": keep, "encoder_uint16_tensors": wide} if cfg.encoder else {}),
            "decoder_uint16_tensors": dwide,
            "calibration_images": len(images_calib), "check_images": len(images_check),
            "psnr_fp32_db": round(float(np.mean(p32)), 3), "psnr_int8_db": round(float(np.mean(p8)), 3),
            "psnr_loss_db": round(loss, 3), "max_loss_db": cfg.max_loss_db,
            "psnr_int8_vs_fp32_db": round(float(np.mean(p_vs)), 2),
            "symbols_changed": changed,  # latent symbols that differ from the fp32 encoder's (0 when fp32)
            "speedup": speed(tmp / "encoder.onnx", tmp / "decoder.onnx",
                             tmp / ("encoder_int8.onnx" if cfg.encoder else "encoder.onnx"), tmp / "decoder_int8.onnx")}


INT8_FILES = {"encoder": "encoder_int8.onnx", "decoder": "decoder_int8.onnx"}  # a model folder's int8 variants


def add_int8_variants(model_dir: str | Path, cfg: Int8Config) -> dict[str, Any]:
    """Add int8 (QDQ) copies of an exported model's fp32 decoder (and with cfg.encoder its encoder) to its
    folder, as alternatives for the same model: the model id, the fp32 files and the entropy tables do not
    change, so `aekit decompress --int8` decodes any file of the model with the int8 decoder (and
    `aekit compress --int8` encodes with the int8 encoder); without --int8 nothing changes.

    The decoder copy is the sub-pixel Conv form (export/lean.py: onnxruntime has fast int8 kernels for
    Conv, not ConvTranspose), calibrated on latents of cfg.calib_data images encoded by the model's own
    encoder and quantiser; the check (export/quantize.py int8_export) codes held-out images through the
    int8 networks. The manifest gets files["decoder_int8"] (and "encoder_int8"), their tile contexts and
    an "int8_variants" section (PSNR lost against fp32, speed-ups). Returns that section. A re-run
    replaces the variants. Raises Int8Error if the loss exceeds cfg.max_loss_db (the folder is left as it
    was), ModelError for a folder that is not a model, ValueError for an `aekit export --int8` model. A
    --weights fp16 export is quantised from the fp32 values its stored weights compute with."""
    import shutil
    import tempfile

    from aekit.export.lean import PASSES, lean_file
    from aekit.export.manifest import load_manifest, save_manifest
    from aekit.export.runtime import Quantiser, tile_contexts
    from aekit.export.speed import side_for, speedup

    d = Path(model_dir)
    m = load_manifest(d)
    if m["files"]["decoder"] != "decoder.onnx" or "int8" in m:
        raise ValueError(f"{d}: its decoder is already int8 (an `aekit export --int8` model)")
    folder = cfg.calib_data or (m.get("training") or {}).get("data")
    if not folder or not Path(folder).is_dir():
        raise Int8Error(f"int8 calibration needs training images: {folder or 'the manifest names no data folder'} "
                        "is not a folder; pass --calib-data DIR")
    calib, check = split_images(folder, m["channels"], cfg, cfg.check_data)
    f, side = m["factor"], side_for(m["factor"])
    rng = np.random.default_rng(0)
    feeds = {"encoder": {"x": rng.uniform(-1, 1, (1, m["channels"], side, side)).astype(np.float32)},
             "decoder": {"y_hat": rng.uniform(-1, 1, (1, m["latent_channels"], side // f, side // f)).astype(np.float32)}}
    parts = ("encoder", "decoder") if cfg.encoder else ("decoder",)

    def speed(e32: Path, d32: Path, e8: Path, d8: Path) -> dict[str, float]:  # against the shipped fp32 files
        new = {"encoder": e8, "decoder": d8}
        return speedup({p: (d / m["files"][p], new[p], feeds[p]) for p in parts}, seconds=1.0)

    tmp = Path(tempfile.mkdtemp(prefix=".int8.", dir=d))
    try:
        shutil.copy(d / m["files"]["encoder"], tmp / "encoder.onnx")
        shutil.copy(d / m["files"]["decoder"], tmp / "decoder.onnx")
        if "storage" in m:  # --weights fp16: quantise the fp32 weights the stored graph computes with
            from aekit.export.storage import unstore_weights_fp16

            for p in ("encoder", "decoder"):
                unstore_weights_fp16(tmp / f"{p}.onnx")
        lean_file(tmp / "decoder.onnx", PASSES)  # exact rewrites, the sub-pixel one included
        try:
            section = int8_export(tmp, calib, check, f, Quantiser.of(m), cfg, speed)
        except Int8Error as e:
            raise Int8Error(f"{str(e).split('; the model was not written')[0]}; {d} is unchanged") from None
        contexts = tile_contexts({f"{p}_int8": tmp / INT8_FILES[p] for p in parts}, f)
        for p in ("encoder", "decoder"):  # a re-run replaces the variants; without --encoder none is left
            m["files"].pop(f"{p}_int8", None)
            (d / INT8_FILES[p]).unlink(missing_ok=True)
        for p in parts:
            (tmp / INT8_FILES[p]).replace(d / INT8_FILES[p])
            m["files"][f"{p}_int8"] = INT8_FILES[p]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not cfg.encoder:
        section.pop("symbols_changed", None)  # the model's own encoder: nothing changed
    section.update(calib_data=str(folder), check_data=str(cfg.check_data or folder),
                   use=("aekit compress --int8 encodes with the int8 encoder (other symbols than fp32, which may "
                        "differ between CPUs; every file still decodes everywhere); " if cfg.encoder else "")
                   + "aekit decompress --int8 decodes with the int8 decoder (the same files; fp32 stays the default)")
    m["int8_variants"] = section
    m["tile_context"] = {**{k: v for k, v in (m.get("tile_context") or {}).items() if not k.endswith("_int8")},
                         **contexts}
    save_manifest(d, m)
    return section
