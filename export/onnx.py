"""Export a checkpoint to encoder.onnx + decoder.onnx + manifest.json, verified.

    aekit export runs/NAME/best.pt --out models/NAME [--fp16] [--int8] [--no-lean]
The export is written to a temp folder, made lean (export/lean.py), checked with onnx.checker,
run with onnxruntime against PyTorch on real images, and only then renamed into place;
--int8 adds a quantised decoder checked for PSNR against the fp32 one (export/quantize.py).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aekit.checkpoint import load_model
from aekit.data import scale_crop
from aekit.images import DIR_MODE, ImageError, load_image, pad_to_multiple, scan_folder, to_model_input
from aekit.entropy_models import QUALITY_STEPS, gaussian_pmf, scale_table
from aekit.metrics import psnr_torch
from aekit.export.entropy import QUANTISER_INTEGER, trim_counts
from aekit.export.hyperprior import EXACT_BITS, HYPER_ACT_BITS, HYPER_FRAC_BITS, IntegerHyperDecoder
from aekit.export.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, entropy_bytes, model_id_of, save_manifest
from aekit.export.lean import DEFAULT_PASSES, PASSES, lean_file
from aekit.export.quantize import Int8Config, Int8Error, centre_crops, int8_export, split_images
from aekit.export.runtime import make_session, tile_contexts
from aekit.export.speed import model_speed, side_for, speedup

OPSET = 18  # pinned: every runtime we target (onnxruntime >= 1.18, TensorRT 10) supports it
log = logging.getLogger(__name__)
EXPORTER = f"torch.onnx dynamo exporter (torch {torch.__version__.split('+')[0]})"
PARITY_TOL = 1e-4  # fp32 max abs error allowed between onnxruntime and PyTorch
PARITY_TOL_FP16 = 2e-2  # fp16 models: max abs error vs the fp32 PyTorch model (values in [-1, 1])
# --weights fp16: images encoded and decoded by the fp16-stored networks against the fp32 ones, worst
# image; 50 dB is an MSE 30x below the error of the finest photo quality (about 35 dB), invisible
STORE_MIN_PSNR_DB = 50.0


class ExportError(Exception):
    """Export refused: the ONNX model failed its checks; nothing was written."""


class _Encode(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, c_y, H/f, W/f)
        return self.model.encode(x)


class _Decode(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:  # (B, c_y, h, w) -> (B, C, h*f, w*f)
        return self.model.decode(y_hat)


def _to_onnx(module: nn.Module, example: torch.Tensor, name_in: str, name_out: str, path: Path) -> None:
    dyn = torch.export.Dim.DYNAMIC
    torch.onnx.export(
        module, (example,), str(path), input_names=[name_in], output_names=[name_out],
        dynamic_shapes={name_in: {0: dyn, 2: dyn, 3: dyn}}, opset_version=OPSET,
        dynamo=True, external_data=False, verbose=False,
    )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def verification_images(ckpt: dict[str, Any], channels: int, n: int = 8) -> tuple[list[np.ndarray], str]:
    """Up to n real images: from the run's validation/training folder, else bundled photos."""
    tc, summary = ckpt.get("train_config", {}), ckpt.get("summary", {})
    size = min(int(tc.get("data_cfg", {}).get("size", 64) or 64), 128)
    for folder in (summary.get("val_data"), summary.get("data"), tc.get("val_data"), tc.get("data")):
        if folder and Path(folder).is_dir():
            try:
                samples, _, _ = scan_folder(folder)
            except (ImageError, OSError):
                continue
            step = max(1, len(samples) // n)
            images = []
            for s in samples[::step][: 2 * n]:
                try:
                    images.append(scale_crop(load_image(s.path, channels)[0], size))
                except ImageError:
                    continue
                if len(images) == n:
                    return images, str(folder)
            if images:
                return images, str(folder)
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.camera()]
    out = []
    for p in photos[:n]:
        p = p if p.ndim == 3 else np.repeat(p[:, :, None], 3, axis=2)
        p = p.mean(axis=2, keepdims=True).round().astype(np.uint8) if channels == 1 else p
        out.append(scale_crop(np.ascontiguousarray(p), size))
    return out, "scikit-image photos"


@torch.no_grad()
def verify(model: nn.Module, enc_path: Path, dec_path: Path, images: list[np.ndarray], tol: float) -> dict[str, float]:
    """Max abs error of onnxruntime vs PyTorch, encoder (divided by max(1, max |y|)) and decoder, on each
    real image.

    Each image is also tried cropped to an odd size (not a multiple of f) to exercise padding.
    """
    enc, dec = make_session(enc_path, ["CPUExecutionProvider"]), make_session(dec_path, ["CPUExecutionProvider"])
    e_err = d_err = 0.0
    for im in images:
        h, w = im.shape[:2]
        for crop in (im, im[: max(1, h - 3), : max(1, w - 1)]):
            x = pad_to_multiple(to_model_input(crop[None]), model.factor)
            y_t = model.encode(torch.from_numpy(x))
            y_o = enc.run(None, {"x": x.astype(_input_dtype(enc))})[0]
            # relative to the latent's range: a rate-distortion model's y is unbounded (|y| in the hundreds
            # for klt), where float32 sums of many products differ by more than 1e-4 absolute
            scale = max(1.0, float(np.abs(y_t.numpy()).max()))
            e_err = max(e_err, float(np.abs(y_o.astype(np.float32) - y_t.numpy()).max()) / scale)
            y_hat = model.quantise(y_t)
            x_t = model.decode(y_hat)
            x_o = dec.run(None, {"y_hat": y_hat.numpy().astype(_input_dtype(dec))})[0]
            if not (np.isfinite(y_o).all() and np.isfinite(x_o).all()):
                raise ExportError("the exported networks produce non-finite values on real images; "
                                  "the model was not written")
            d_err = max(d_err, float(np.abs(x_o.astype(np.float32) - x_t.numpy()).max()))
    if e_err >= tol or d_err >= tol:
        raise ExportError(
            f"onnxruntime disagrees with PyTorch: max abs error encoder {e_err:.3g} (of max(1, |y|)), decoder {d_err:.3g} "
            f"(limit {tol:g}); the model was not written"
        )
    return {"encoder_max_abs_err": e_err, "decoder_max_abs_err": d_err, "images": len(images)}


def _input_dtype(session: Any) -> type:
    return np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32


def export_model(checkpoint: str | Path, out: str | Path, fp16: bool = False, force: bool = False,
                 lean: bool = True, int8: Int8Config | None = None, speed: bool = True,
                 weights: str = "fp32") -> Path:
    """Export, verify and write the model folder; returns its path.

    lean: apply export/lean.py's exact graph rewrites (BatchNorm folding, activations before
    DepthToSpace, sub-pixel ConvTranspose) before the parity check. int8: also write a QDQ int8
    decoder (and encoder with int8.encoder) that the manifest's "files" then name; refused
    (Int8Error) when it loses more than int8.max_loss_db PSNR. speed: measure MP/s (1 thread) into
    the manifest's "speed" section (GFLOP/MP are always counted). weights="fp16": store the fp32
    networks' large weights as fp16 (export/storage.py: half the file, fp32 compute), refused
    unless images decoded by the stored networks stay within STORE_MIN_PSNR_DB of the fp32 ones; with
    int8, the int8 networks are quantised from the fp32 ones first and the fp32 fallbacks and h_a are
    then stored as fp16 (the smallest folder: an int8 model whose other files are half size).
    Raises ExportError / Int8Error (nothing written) on any failed check, ValueError for bad options.
    """
    if weights not in ("fp32", "fp16"):
        raise ValueError(f"weights must be fp32 or fp16, got {weights!r}")
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        # --force replaces a model folder (or an empty one), never a file or a folder of something else
        raise ExportError(f"{out}: " + ("is a file" if not out.is_dir() else "is not a model folder (no manifest.json)")
                          + "; --force replaces only a model folder: choose another --out")
    model, ckpt = load_model(checkpoint)
    model = model.float().eval()
    cfg = model.cfg
    bad = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ExportError(f"{checkpoint}: non-finite weights in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} "
                          "(a diverged run); the model was not written")
    if not cfg.rd and not ckpt.get("latent_hist"):
        raise ExportError(
            f"{checkpoint}: no latent symbol histogram (written when a run finishes); "
            "export best.pt of a finished run, or finish this one with `aekit train ... --resume`"
        )
    images, source = verification_images(ckpt, cfg.channels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.monotonic()
        f = cfg.factor
        _to_onnx(_Encode(model).eval(), torch.zeros(2, cfg.channels, 4 * f, 4 * f).uniform_(-1, 1), "x", "y", tmp / "encoder.onnx")
        _to_onnx(_Decode(model).eval(), torch.zeros(2, cfg.latent_channels, 4, 4).uniform_(-1, 1), "y_hat", "x_hat", tmp / "decoder.onnx")
        # int8: every pass, the sub-pixel rewrite included: onnxruntime has no fast int8 ConvTranspose,
        # so a quantised ConvTranspose decoder runs no faster (measured 0.97x), its Conv form 2.3-2.8x
        passes = PASSES if int8 is not None else DEFAULT_PASSES
        graph = {"lean": {k: lean_file(tmp / f"{k}.onnx", passes) for k in ("encoder", "decoder")} if lean else False}
        check = verify(model, tmp / "encoder.onnx", tmp / "decoder.onnx", images, PARITY_TOL)
        files = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
        extra: dict[str, Any] = {"graph": graph}
        if weights == "fp16" and int8 is None:
            extra["storage"] = _store_fp16(model, tmp, images)
        latent = _latent_fields(model, ckpt)
        hyper_files = _export_hyper(model, tmp, latent, ckpt, weights) if cfg.hyperprior else {}  # h_a, h_s
        files.update(hyper_files)
        if int8 is not None:
            extra["int8"] = _export_int8(tmp, ckpt, cfg, latent, int8)
            if weights == "fp16":  # the fp32 fallbacks, after the int8 networks were quantised from them
                extra["storage"] = _store_fp16(model, tmp, images)
            files = {"encoder": "encoder_int8.onnx" if int8.encoder else "encoder.onnx", "decoder": "decoder_int8.onnx",
                     **({"encoder_fp32": "encoder.onnx"} if int8.encoder else {}), "decoder_fp32": "decoder.onnx",
                     **hyper_files}
        if fp16:
            files.update(_export_fp16(model, tmp, images))
        extra["tile_context"] = tile_contexts({k: tmp / files[k] for k in ("encoder", "decoder")}, cfg.factor)
        extra["speed"] = model_speed(tmp / files["encoder"], tmp / files["decoder"], cfg.channels,
                                     cfg.latent_channels, cfg.factor, seconds=0.5, measure=speed)
        manifest = _manifest(model, ckpt, tmp, files, check, source, checkpoint, time.monotonic() - t0, latent, extra)
        save_manifest(tmp, manifest)
        tmp.chmod(DIR_MODE)  # mkdtemp made it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"exported model {manifest['model_id']} to {out} (max abs err encoder "
          f"{check['encoder_max_abs_err']:.2e} of max(1, |y|), decoder {check['decoder_max_abs_err']:.2e} "
          f"on {check['images']} images from {source})")
    return out


def _store_fp16(model: nn.Module, tmp: Path, images: list[np.ndarray]) -> dict[str, Any]:
    """encoder.onnx and decoder.onnx in tmp rewritten with fp16-stored weights (export/storage.py);
    returns the manifest's "storage" section. ExportError if the decoded images (encoded and decoded
    by the stored networks, as the codec would) come out under STORE_MIN_PSNR_DB from the fp32 ones."""
    from aekit.export.storage import store_weights_fp16

    def decoded(enc: Any, dec: Any) -> list[np.ndarray]:
        out = []
        for im in images:
            x = pad_to_multiple(to_model_input(im[None]), model.factor)
            y_hat = model.quantise(torch.from_numpy(enc.run(None, {"x": x})[0])).numpy()
            out.append(np.clip(np.rint((dec.run(None, {"y_hat": y_hat})[0] + 1) * 127.5), 0, 255))
        return out

    cpu = ["CPUExecutionProvider"]
    ref = decoded(make_session(tmp / "encoder.onnx", cpu), make_session(tmp / "decoder.onnx", cpu))
    info = {k: store_weights_fp16(tmp / f"{k}.onnx") for k in ("encoder", "decoder")}
    got = decoded(make_session(tmp / "encoder.onnx", cpu), make_session(tmp / "decoder.onnx", cpu))
    mse = max(float(np.mean((a - b) ** 2)) for a, b in zip(ref, got))
    psnr = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
    if psnr < STORE_MIN_PSNR_DB:
        raise ExportError(f"fp16-stored weights change the decoded images too much: {psnr:.1f} dB PSNR against the "
                          f"fp32 networks (limit {STORE_MIN_PSNR_DB:g} dB); export with --weights fp32")
    return {"weights": "fp16", "method": "float32 initializers of >= 1024 elements stored as float16, Cast to "
            "float32 in the graph (export/storage.py)", "files": info,
            "decoded_psnr_vs_fp32_db": round(psnr, 2) if math.isfinite(psnr) else "identical",
            "images": len(images), "min_psnr_db": STORE_MIN_PSNR_DB}


def _export_fp16(model: nn.Module, tmp: Path, images: list[np.ndarray]) -> dict[str, str]:
    """fp16 weights, activations and inputs/outputs (for GPUs), checked against fp32 torch."""
    import copy

    half = copy.deepcopy(model).half().eval()
    cfg, f = model.cfg, model.cfg.factor
    x = torch.zeros(2, cfg.channels, 4 * f, 4 * f, dtype=torch.float16)
    y = torch.zeros(2, cfg.latent_channels, 4, 4, dtype=torch.float16)
    _to_onnx(_Encode(half).eval(), x, "x", "y", tmp / "encoder_fp16.onnx")
    _to_onnx(_Decode(half).eval(), y, "y_hat", "x_hat", tmp / "decoder_fp16.onnx")
    verify(model, tmp / "encoder_fp16.onnx", tmp / "decoder_fp16.onnx", images, PARITY_TOL_FP16)
    return {"encoder_fp16": "encoder_fp16.onnx", "decoder_fp16": "decoder_fp16.onnx"}


def _export_int8(tmp: Path, ckpt: dict[str, Any], cfg: Any, latent: dict[str, Any], int8: Int8Config) -> dict[str, Any]:
    """The int8 files in tmp and the manifest's "int8" section (calibration on the run's training images)."""
    from aekit.export.runtime import Quantiser

    tc, summary = ckpt.get("train_config", {}), ckpt.get("summary", {})
    folder = int8.calib_data or next((f for f in (summary.get("data"), tc.get("data")) if f and Path(f).is_dir()), None)
    if folder is None or not Path(folder).is_dir():
        raise Int8Error(f"int8 calibration needs training images: {folder or 'the run names no data folder here'} "
                        "is not a folder; pass --calib-data DIR")
    calib, check = split_images(folder, cfg.channels, int8, int8.check_data)
    f = cfg.factor

    def speed(e32: Path, d32: Path, e8: Path, d8: Path) -> dict[str, float]:
        s = side_for(f)
        rng = np.random.default_rng(0)
        x = {"x": rng.uniform(-1, 1, (1, cfg.channels, s, s)).astype(np.float32)}
        y = {"y_hat": rng.uniform(-1, 1, (1, cfg.latent_channels, s // f, s // f)).astype(np.float32)}
        return speedup({"encoder": (e32, e8, x), "decoder": (d32, d8, y)}, seconds=1.0)

    out = int8_export(tmp, calib, check, f, Quantiser.of(latent), int8, speed)
    return {**out, "calib_data": str(folder), "check_data": str(int8.check_data or folder)}


def _manifest(model, ckpt, tmp, files, check, source, checkpoint, secs, latent, extra) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model_id": model_id_of(tmp / files["encoder"], tmp / files["decoder"], entropy_bytes(latent)),
        "arch": cfg.arch,
        "channels": cfg.channels,
        "ratio": cfg.ratio,
        "factor": cfg.factor,
        "latent_channels": cfg.latent_channels,
        "padding": {"mode": "edge", "multiple": cfg.factor, "where": "bottom-right", "crop_back": True},
        "normalisation": {"input": "x = pixel / 127.5 - 1", "output": "pixel = round((x_hat + 1) * 127.5)"},
        **latent,
        "files": files,
        "io": {"encoder": {"input": "x", "output": "y"}, "decoder": {"input": "y_hat", "output": "x_hat"}},
        "opset": OPSET,
        "exporter": EXPORTER,
        "verification": {**check, "source": source, "tolerance": PARITY_TOL, "seconds": round(secs, 1)},
        "model_config": cfg.to_dict(),
        "training": {**ckpt.get("summary", {}), "checkpoint": str(Path(checkpoint).resolve())},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,  # graph (lean passes applied), tile_context (latent units), speed (GFLOP/MP, MP/s), int8 (when --int8)
    }


# Qualities of a rate-distortion model: quantisation steps Δ of y around the trained Δ = 1,
# one integer table set each (the learned prior integrated over bins of width Δ), so one
# trained model covers several rates; the quality number grows with fidelity.
# A step is offered only if the prior puts at most MAX_CLIPPED of the mass per symbol beyond
# the 8-bit symbol range (those latents are clipped to the end bins). The default quality is
# the one that minimises the model's own training objective D + λ·R on real images
# (`_default_quality`): the trained Δ = 1 for a converged model, a coarser step where the
# decoder gains nothing from the finer one (a short training), so the default wastes no bytes.
# The steps themselves are aekit.entropy_models.QUALITY_STEPS (the hyperprior refit trains at them).
MAX_CLIPPED = 1e-4
RD_LEVELS = 255  # symbols 0..254 = integers -127..127 (uint8 latent files)


class _HyperEncode(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:  # (B, c_y, 4h', 4w') zero-padded -> (B, c_z, h', w')
        return self.model.hyper_encoder(y_hat)


def _integer_hyper_decoder(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """model.hyper_decoder -> (layer specs, int arrays) of aekit.export.hyperprior.IntegerHyperDecoder.

    Each layer's weight shift s is the largest (≤ 20) keeping K · max|W_q| · 2^26 + max|b_q| < 2^52
    (one bit of margin under float64's 2^53), so the integer evaluation stays exact, and then, where that
    still leaves max|W_q| ≥ 1024, lowered until the weights fit 16 bits (|W_q| ≤ 32767: a resolution of
    1/32767 of the largest weight, far under the float model's own noise; a 64-channel h_s's compressed
    file shrank 22 %). The
    exporter's index-agreement check (≥ 99 % of positions) guards both.
    """
    specs, arrays = [], {}
    convs = [m for m in model.hyper_decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for i, conv in enumerate(convs):
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy()
        transpose = isinstance(conv, nn.ConvTranspose2d)
        shift, wq, bq = integer_layer(w, b, transpose, "hyper decoder")
        spec = {"kind": "conv_transpose" if transpose else "conv", "stride": conv.stride[0],
                "padding": conv.padding[0], "shift": shift, "relu": i < len(convs) - 1}
        if transpose:
            spec["output_padding"] = conv.output_padding[0]
        specs.append(spec)
        arrays[f"w{i}"], arrays[f"b{i}"] = smallest_int(wq), smallest_int(bq)
    return specs, arrays


def integer_layer(w: np.ndarray, b: np.ndarray, transpose: bool, what: str) -> tuple[int, np.ndarray, np.ndarray]:
    """float64 conv weights (out, in, kh, kw) (transposed: (in, out, kh, kw)) and bias -> (s, W_q, b_q) for
    exact integer evaluation on activations below 2^26 in units of 2^-16: W_q = round(W · 2^s), b_q =
    round(b · 2^(s + 16)), s the largest (≤ 20) keeping K · max|W_q| · 2^26 + max|b_q| < 2^52, then lowered
    while that leaves weights over 16 bits and the largest at least 1024 (see _integer_hyper_decoder).
    ExportError when no shift fits."""
    k = (w.shape[0] if transpose else w.shape[1]) * w.shape[2] * w.shape[3]
    for shift in range(20, -1, -1):
        wq = np.rint(w * 2.0 ** shift).astype(np.int64)
        bq = np.rint(b * 2.0 ** (shift + HYPER_FRAC_BITS)).astype(np.int64)
        if k * int(np.abs(wq).max()) * (1 << HYPER_ACT_BITS) + int(np.abs(bq).max()) < 1 << (EXACT_BITS - 1):
            break
    else:
        raise ExportError(f"{what} weights too large for exact integer evaluation")
    while shift > 0 and int(np.abs(np.rint(w * 2.0 ** (shift - 1))).max()) >= 1024 and int(np.abs(wq).max()) > 32767:
        shift -= 1  # 16-bit weights (a lower shift only shrinks both terms of the bound)
        wq = np.rint(w * 2.0 ** shift).astype(np.int64)
        bq = np.rint(b * 2.0 ** (shift + HYPER_FRAC_BITS)).astype(np.int64)
    return shift, wq, bq


def _export_hyper(model: nn.Module, tmp: Path, latent: dict[str, Any], ckpt: dict[str, Any],
                  weights: str = "fp32") -> dict[str, str]:
    """Write hyper_encoder.onnx and hyper_decoder.npz, and put the hyperprior (z tables, integer layer
    specs, file hashes, per-quality scale thresholds) into latent["entropy"]. The thresholds of quality
    Δ are T_k = floor((ln s_k + ln Δ) · 2^(s + F_a)) for the table scales s_k, k < 63 (s: the last
    layer's shift), and step4 = 4Δ for the quarter-step mean. Checked: the integer h_s picks the float
    h_s's table and base at ≥ 99 % of positions."""
    import hashlib

    cy = model.cfg.latent_channels
    _to_onnx(_HyperEncode(model).eval(), torch.zeros(2, cy, 8, 8).uniform_(-4, 4), "y_hat", "z", tmp / "hyper_encoder.onnx")
    if weights == "fp16":  # h_a only chooses z, which the file carries: rounding its weights cannot break decoding
        from aekit.export.storage import store_weights_fp16

        store_weights_fp16(tmp / "hyper_encoder.onnx")
    specs, arrays = _integer_hyper_decoder(model)
    np.savez_compressed(tmp / "hyper_decoder.npz", **arrays)
    half = (RD_LEVELS - 1) // 2
    frac = specs[-1]["shift"] + HYPER_FRAC_BITS
    log_s = np.log(scale_table())[:-1]
    ent = latent["entropy"]
    for q in ent["qualities"]:
        q["thresholds"] = [int(v) for v in np.floor((log_s + math.log(q["step"])) * 2.0 ** frac)]
        q["step4"] = int(4 * q["step"])
        if q["step4"] != 4 * q["step"]:
            raise ExportError(f"quality step {q['step']} is not a multiple of 1/4 (the mean grid needs 4Δ integer)")
    sha = {k: hashlib.sha256((tmp / f).read_bytes()).hexdigest() for k, f in
           (("encoder", "hyper_encoder.onnx"), ("decoder", "hyper_decoder.npz"))}
    ent["scale_tables"] = trim_counts(gaussian_pmf(2 * half))  # d = k − base + 254: 509 symbols
    ent["hyper"] = {"channels": model.side_channels(cy), "factor": model.HYPER_FACTOR,
                    "tables": trim_counts(model.entropy.integer_pmf(1.0, half)),
                    "encoder": "hyper_encoder.onnx", "encoder_sha256": sha["encoder"],
                    "decoder": "hyper_decoder.npz", "decoder_sha256": sha["decoder"],
                    "frac_bits": HYPER_FRAC_BITS, "act_bits": HYPER_ACT_BITS, "layers": specs}
    # the integer h_s against the float one, on real images, at Δ = 1: the same table and base?
    dec = IntegerHyperDecoder(specs, arrays)
    agree = total = 0
    z_varies = False  # a collapsed hyperprior gives one z everywhere: h_s then predicts one Gaussian per channel
    with torch.no_grad():
        for im in _native_crops(ckpt, model.cfg.channels, n=4):
            x = torch.from_numpy(pad_to_multiple(to_model_input(im[None]), model.factor))
            y = model.encode(x)
            z_hat = torch.clamp(torch.round(model.hyper_analysis(y)), -half, half)
            z_varies = z_varies or bool((z_hat.amax(dim=(2, 3)) != z_hat.amin(dim=(2, 3))).any())
            mean, log_scale = (t[0].double().numpy() for t in model.gaussian_params(z_hat, *y.shape[-2:]))
            m4 = np.floor(4 * mean + 0.5).astype(np.int64)
            ref = (4 * np.searchsorted(log_s, log_scale, side="left") + (m4 & 3), np.clip(m4 >> 2, -half, half))
            got = dec.tables((z_hat[0].numpy() + half).astype(np.uint8), y.shape[2], y.shape[3],
                             np.floor(log_s * 2.0 ** frac), 4)
            agree, total = agree + int(((ref[0] == got[0]) & (ref[1] == got[1])).sum()), total + got[0].size
    ent["hyper"]["index_agreement"] = round(agree / max(total, 1), 5)
    ent["hyper"]["z_varies"] = z_varies
    if not z_varies:
        log.warning("the hyperprior has collapsed: z is the same at every position of 4 training crops, so it "
                    "codes like a per-channel prior and zstd will often win; refit it: aekit refit-hyperprior CKPT "
                    "DATA --out RUN --reinit")
    if agree < 0.99 * total:
        raise ExportError(f"integer hyper decoder picks the float model's table at only {agree / total:.1%} of positions")
    ent["model"] = ("mean-scale hyperprior (Balle et al. 2018, Minnen et al. 2018): Gaussian tables per scale and "
                    "quarter-step mean, factorized prior for z")
    return {"hyper_encoder": "hyper_encoder.onnx", "hyper_decoder": "hyper_decoder.npz"}


def smallest_int(a: np.ndarray) -> np.ndarray:
    """The integers of a in the narrowest of int16 / int32 / int64 that holds them all (the hyper decoder's
    weights mostly fit 16 bits; the runtime reads any integer dtype as int64)."""
    for t in (np.int16, np.int32):
        info = np.iinfo(t)
        if a.size == 0 or (int(a.min()) >= info.min and int(a.max()) <= info.max):
            return a.astype(t)
    return a.astype(np.int64)


def _latent_fields(model: nn.Module, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The manifest's latent description and entropy model (tanh histogram or RD table sets)."""
    cfg = model.cfg
    if cfg.hyperprior:
        return _hyper_latent_fields(model, ckpt)
    if not cfg.rd:
        return {"latent": {"range": [-1.0, 1.0], "levels": cfg.latent_levels, "dtype": "uint8",
                           "quantise": "q = round((y + 1) * (levels - 1) / 2)",
                           "dequantise": "y_hat = q * 2 / (levels - 1) - 1"},
                "latent_hist": ckpt["latent_hist"]}
    half = (RD_LEVELS - 1) // 2
    qualities = []
    for step in QUALITY_STEPS:
        counts = model.entropy.integer_pmf(step, half)  # (c_y, L); end bins hold the clipped tails
        clipped = float(model.entropy.tail_mass(step, half).mean())
        if clipped > MAX_CLIPPED:  # the 8-bit symbols cannot hold this step's latent: not offered
            continue
        qualities.append({"quality": len(qualities) + 1, "step": step, "clipped": clipped,
                          "tables": trim_counts(counts)})
    if not qualities:
        raise ExportError(f"the latent does not fit {RD_LEVELS} symbols at any quality step {QUALITY_STEPS} "
                          f"(prior tail mass beyond ±{half} steps over {MAX_CLIPPED:g}): retrain with a larger --rate-weight")
    default = _default_quality(model, ckpt, qualities)
    return {"latent": {"quantiser": QUANTISER_INTEGER, "levels": RD_LEVELS, "dtype": "uint8",
                       "quantise": f"q = clip(round(y / step), -{half}, {half}) + {half}",
                       "dequantise": f"y_hat = (q - {half}) * step"},
            "entropy": {"model": "factorized prior (Balle et al. 2018), integer tables per quality",
                        "default_quality": default["quality"], "qualities": qualities}}


@torch.no_grad()
def _hyper_latent_fields(model: nn.Module, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Latent and quality steps of a hyperprior model; a step is offered if no more than MAX_CLIPPED
    of y's elements on the check images fall beyond the 8-bit symbols. Tables: _export_hyper."""
    half = (RD_LEVELS - 1) // 2
    ys = [model.encode(torch.from_numpy(pad_to_multiple(to_model_input(im[None]), model.factor)))
          for im in _native_crops(ckpt, model.cfg.channels)]
    qualities = []
    for step in QUALITY_STEPS:
        clipped = float(np.mean([float((torch.abs(torch.round(y / step)) > half).float().mean()) for y in ys]))
        if clipped <= MAX_CLIPPED:
            qualities.append({"quality": len(qualities) + 1, "step": step, "clipped": clipped})
    if not qualities:
        raise ExportError(f"the latent does not fit {RD_LEVELS} symbols at any quality step {QUALITY_STEPS}")
    default = _default_quality(model, ckpt, qualities)
    return {"latent": {"quantiser": QUANTISER_INTEGER, "levels": RD_LEVELS, "dtype": "uint8",
                       "quantise": f"q = clip(round(y / step), -{half}, {half}) + {half}",
                       "dequantise": f"y_hat = (q - {half}) * step"},
            "entropy": {"model": "scale hyperprior", "default_quality": default["quality"], "qualities": qualities}}


@torch.no_grad()
def _default_quality(model: nn.Module, ckpt: dict[str, Any], qualities: list[dict[str, Any]]) -> dict[str, Any]:
    """The quality minimising D + λ·R (the run's MSE on [-1, 1] and bits per pixel under the
    prior, λ = its --rate-weight) on up to 8 real 256-px crops at native resolution; each
    quality entry gets the measured {"psnr", "bpp"} of that check for the record."""
    images = _native_crops(ckpt, model.cfg.channels)
    lam = float(ckpt.get("train_config", {}).get("rate_weight") or 0.0)
    best, best_cost = qualities[-1], float("inf")
    for q in qualities:
        mse = bits = pixels = 0.0
        psnrs = []
        for im in images:
            x = torch.from_numpy(pad_to_multiple(to_model_input(im[None]), model.factor))
            y_hat, b = model.step_bits(model.encode(x), q["step"], (RD_LEVELS - 1) // 2)
            x_hat = model.decode(y_hat)[..., : im.shape[0], : im.shape[1]].clamp(-1, 1)
            x_in = x[..., : im.shape[0], : im.shape[1]]
            mse += float(((x_hat - x_in) ** 2).mean())  # the training objective's D
            psnrs.append(float(psnr_torch(x_hat, x_in)[0]))  # the one PSNR (per image, uint8), as the codec reports
            bits += b
            pixels += im.shape[0] * im.shape[1]
        mse, bpp = mse / len(images), bits / pixels
        q["check"] = {"psnr": round(sum(psnrs) / len(psnrs), 3), "bpp": round(bpp, 4), "images": len(images)}
        if mse + lam * bpp < best_cost:
            best, best_cost = q, mse + lam * bpp
    return best


def _native_crops(ckpt: dict[str, Any], channels: int, n: int = 8, side: int = 256) -> list[np.ndarray]:
    """Up to n centre crops of `side` px at native resolution from the run's data (else bundled photos)."""
    tc, summary = ckpt.get("train_config", {}), ckpt.get("summary", {})
    folder = next((f for f in (summary.get("val_data"), summary.get("data"), tc.get("val_data"), tc.get("data"))
                   if f and Path(f).is_dir()), None)
    out = centre_crops(folder, channels, n, side) if folder is not None else []
    return out or verification_images(ckpt, channels, n)[0]


def checkpoint_info(path: str | Path, as_json: bool = False) -> str:
    """`aekit info` of a .pt checkpoint: its model, epochs (counted from 1, as training prints them; the
    checkpoint stores 0-based indexes), best epoch and training summary, as readable lines or JSON.
    Raises aekit.checkpoint.CheckpointError for a file that is not an aekit checkpoint."""
    from aekit.checkpoint import load_checkpoint

    c = load_checkpoint(path)
    epoch, best = c.get("epoch"), c.get("best_epoch")
    keep = {"model_config": c.get("model_config"), "summary": c.get("summary"), "classes": c.get("classes"),
            "epochs_done": epoch + 1 if isinstance(epoch, int) else None,
            "best_epoch": best + 1 if isinstance(best, int) and best >= 0 else None, "best_val_loss": c.get("best_val")}
    if as_json:
        return json.dumps(keep, indent=1, default=str)
    mc, summ = keep["model_config"] or {}, keep["summary"] or {}
    lines = [f"checkpoint   {path}",
             "model        " + ", ".join(f"{k} {v}" for k, v in mc.items()),
             f"saved        after epoch {keep['epochs_done']}; best validation so far: epoch {keep['best_epoch']}"
             + (f" (val loss {keep['best_val_loss']:.5g})" if isinstance(keep["best_val_loss"], float) else "")]
    if summ:  # written into best.pt when the run ended
        lines.append("run          " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in summ.items() if isinstance(v, (int, float, str))
                                               and not isinstance(v, bool) and v != ""))
    if keep["classes"]:
        lines.append(f"classes      {', '.join(map(str, keep['classes']))}")
    tc = c.get("train_config") or {}
    if tc.get("init_from"):  # warm start, frozen decoder, distillation: how this run began
        lines.append(f"started      from {tc['init_from']}" + (", decoder frozen" if tc.get("freeze_decoder") else "")
                     + (f"; g_a distilled from {tc['distill_from']} (weight {tc.get('distill_weight')}, "
                        f"{tc.get('distill_epochs') or 'all'} epochs)" if tc.get("distill_from") else ""))
    elif tc.get("distill_from"):
        lines.append(f"started      fresh; g_a distilled from {tc['distill_from']} (weight {tc.get('distill_weight')}, "
                     f"{tc.get('distill_epochs') or 'all'} epochs)")
    lines.append("export       aekit export PATH --out MODEL (then aekit info MODEL)")
    return "\n".join(lines)
