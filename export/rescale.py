"""Rescaled models: an exported transform run on a resampled pixel grid, for another ratio.

    aekit rescale photos-r9-hq --ratio 4 --out models/photos-r4

The ratio fixes only the number of latent elements per input element, ratio·c_y = f²·C. A model of
factor f run on the image resampled by s = f / f' has factor f' on the image's own grid, and so the
ratio f'²·C / c_y. For a rate-distortion model trained at 1/9 (48 channels at H/12), s = 1.5 gives
48 channels at H/8: exactly 1/4, with the trained transform, hyperprior and integer tables unchanged.
Resolution adaptation of this kind is old practice in video coding (H.263 Annex P, VVC's reference
picture resampling); here it buys the 1/4 ratio a transform whose PSNR does not saturate where the
shipped factor-16 one does (codec/RESULTS.md, 2026-12-01).

The resampling is part of the exported graphs, so everything downstream (padding, tiles, memory
estimates, the coder, the file format) sees an ordinary model of factor f':

- encoder: x (B, C, H, W), H and W multiples of f' -> ONNX Resize to (H·f/f', W·f/f') -> the source
  encoder -> y (B, c_y, H/f', W/f');
- decoder: ŷ -> the source decoder -> x̂ at (h·f, w·f) -> Resize to (h·f', w·f').

Resize is bicubic with Keys' a = −0.5 (Keys 1981, as Pillow's BICUBIC), with ONNX opset 18's
antialiasing filter where it shrinks (the kernel stretched by 1/s, as Pillow's resampling does): the
graphs compute what Pillow's float bicubic resize does, to 1e-5 (tested). The sizes are computed with
integer ops from the input's shape, never from a float scale.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.manifest import ModelError, entropy_bytes, load_manifest, model_id_of, save_manifest
from aekit.images import DIR_MODE

MIN_OPSET = 18  # Resize's antialias attribute
CUBIC_A = -0.5  # Keys' cubic convolution parameter (Pillow BICUBIC); ONNX's default is -0.75
CUBIC_REACH = 2  # taps each side of a cubic kernel, in the units of the grid it reads (× 1/s when shrinking)
NETWORK_FILES = ("encoder", "decoder")
COPIED_FILES = ("hyper_encoder", "hyper_decoder", "channel_context")  # these read and write latents only: unchanged
DROPPED = ("int8_variants", "int8", "speed", "verification", "graph", "tile_context", "calibration",
           "fp16")  # figures of the source's graphs (and a detector's banks); re-measured or left out


def graph_io(m: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The encoder's and decoder's input and output names of manifest m ("io"; the exporter's x -> y and
    y_hat -> x_hat where an older manifest has none)."""
    return {"encoder": {"input": "x", "output": "y"}, "decoder": {"input": "y_hat", "output": "x_hat"},
            **(m.get("io") or {})}


def rescaled_factor(m: dict[str, Any], ratio: int) -> int:
    """The factor f' giving `ratio` to a model of manifest m: f'²·C = ratio·c_y.

    Raises ModelError when no integer factor does (naming the ratios this model can be rescaled to).
    """
    c, cy = int(m["channels"]), int(m["latent_channels"])
    f2, rem = divmod(ratio * cy, c)
    f = math.isqrt(f2) if not rem else 0
    if not f or f * f != f2:
        ok = [r for r in range(1, 65) if (r * cy) % c == 0 and math.isqrt(r * cy // c) ** 2 == r * cy // c]
        raise ModelError(f"model {m['model_id']} ({cy} latent channels, {c} image channels) cannot give ratio "
                         f"{ratio}: f²·{c} = {ratio}·{cy} has no integer f (ratios it can give: "
                         f"{', '.join(map(str, ok)) or 'none'})")
    return f


def _resize_nodes(src: str, dst: str, mul: int, div: int, prefix: str) -> tuple[list, list]:
    """ONNX nodes resizing src (B, C, H, W) to dst (B, C, H·mul/div, W·mul/div) with integer size ops,
    and their constant initializers. antialias=1 either way: it changes nothing when enlarging (the same
    values to 3e-7), but onnxruntime's antialias path is separable and ran 29x faster there (1.7 against
    49 ms for 256² -> 384² RGB on one thread)."""
    from onnx import helper, numpy_helper

    n = lambda s: f"{prefix}/{s}"  # noqa: E731
    consts = [numpy_helper.from_array(np.array(v, np.int64), n(k)) for k, v in
              (("lo", [0]), ("mid", [2]), ("hi", [4]), ("mul", [mul, mul]), ("div", [div, div]))]
    nodes = [
        helper.make_node("Shape", [src], [n("shape")]),
        helper.make_node("Slice", [n("shape"), n("lo"), n("mid")], [n("bc")]),
        helper.make_node("Slice", [n("shape"), n("mid"), n("hi")], [n("hw")]),
        helper.make_node("Mul", [n("hw"), n("mul")], [n("hw_mul")]),
        helper.make_node("Div", [n("hw_mul"), n("div")], [n("hw_new")]),
        helper.make_node("Concat", [n("bc"), n("hw_new")], [n("sizes")], axis=0),
        helper.make_node("Resize", [src, "", "", n("sizes")], [dst], mode="cubic", cubic_coeff_a=CUBIC_A,
                         coordinate_transformation_mode="half_pixel", exclude_outside=1, antialias=1),
    ]
    return nodes, consts


def rescale_graph(src: Path, dst: Path, role: str, f_src: int, f_new: int, names: dict[str, str]) -> None:
    """Write dst: the ONNX graph src with a Resize before it (role "encoder*": pixels by f_src/f_new) or
    after it (role "decoder*": pixels by f_new/f_src). names: {"input": ..., "output": ...} of src."""
    import onnx

    model = onnx.load(str(src))
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < MIN_OPSET:
        raise ModelError(f"{src}: ONNX opset below {MIN_OPSET} (Resize without antialias); re-export the model")
    g = model.graph
    enc = role.startswith("encoder")
    inner = f"{names['input']}/resampled" if enc else f"{names['output']}/native"
    if enc:
        x = names["input"]
        for node in g.node:
            node.input[:] = [inner if i == x else i for i in node.input]
        nodes, consts = _resize_nodes(x, inner, f_src, f_new, "rescale_in")
        old = list(g.node)
        del g.node[:]
        g.node.extend(nodes + old)
    else:
        out = names["output"]
        for node in g.node:
            node.output[:] = [inner if o == out else o for o in node.output]
            node.input[:] = [inner if i == out else i for i in node.input]
        nodes, consts = _resize_nodes(inner, out, f_new, f_src, "rescale_out")
        g.node.extend(nodes)
    for vi in list(g.value_info):
        if vi.name in (inner, names["input"], names["output"]):
            g.value_info.remove(vi)
    for io in (*g.input, *g.output):  # spatial sizes become those of the new grid: leave them symbolic
        dims = io.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if k >= 2:
                d.ClearField("dim_value")
                d.dim_param = f"{io.name}_{'hw'[k - 2]}"
    g.initializer.extend(consts)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def check_crops(m: dict[str, Any], n: int, side: int, folder: str | Path | None = None) -> tuple[list[np.ndarray], str]:
    """Up to n centre crops (uint8 (h, w, C), at most side px) of `folder`, else of the source's training
    data where that folder exists here, else of the photos bundled with scikit-image and scikit-learn; and
    where they came from. ModelError when `folder` is given and has no readable image."""
    import contextlib
    import io

    from aekit.export.quantize import centre_crops

    if folder is not None:
        crops = centre_crops(folder, int(m["channels"]), n, side) if Path(folder).is_dir() else []
        if not crops:
            raise ModelError(f"{folder}: no readable image to choose the default quality with")
        return crops, str(folder)
    trained = (m.get("training") or {}).get("data")
    if trained and Path(trained).is_dir():
        crops = centre_crops(trained, int(m["channels"]), n, side)
        if crops:
            return crops, str(trained)
    from aekit.datasets import sample_photos

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        sample_photos(tmp)
        return centre_crops(tmp, int(m["channels"]), n, side), "the photos bundled with scikit-image and scikit-learn"


def rd_points(model_dir: Path, crops: list[np.ndarray], manifest: dict[str, Any] | None = None,
              qualities: list[int] | None = None, verify: bool = False) -> dict[int, tuple[float, float, float]]:
    """{quality: (D, R, PSNR)} of a rate-distortion model on crops, as the codec codes them by default (RDOQ,
    the smallest payload): D the mean squared error on the model's [-1, 1] scale (its training objective's
    D), R payload bits per pixel (headers left out), PSNR the per-image mean in dB on uint8 pixels.
    manifest: the tables to code with (default the folder's: a candidate one, e.g. aekit add-quality's, with
    the folder's networks); qualities: these only (default all); verify: decode every payload and raise
    ValueError where it does not give back its symbols."""
    from aekit.export.entropy import RDOQ_MAX_SYMBOLS, RDOQ_T, EntropyModel
    from aekit.export.runtime import Quantiser, Runtime

    rt = Runtime(model_dir, device="cpu")
    m = rt.manifest if manifest is None else manifest
    ys = [rt.encode(im[None]) for im in crops]
    out = {}
    for entry in m["entropy"]["qualities"]:
        q = int(entry["quality"])
        if qualities is not None and q not in qualities:
            continue
        qz, em = Quantiser.of(m, None, q), EntropyModel.from_manifest(m, rt.levels, q)
        d = bits = px = 0.0
        psnrs = []
        for im, y in zip(crops, ys):
            sym = qz.quantise(y)[0]
            if sym.size <= RDOQ_MAX_SYMBOLS:
                sym = em.rdoq(sym, qz.residual(y)[0], RDOQ_T)
            coder, payload = em.encode(sym)
            if verify and not np.array_equal(em.decode(coder, payload, sym.shape), sym):
                raise ValueError(f"model {m.get('model_id')}: quality {q}'s payload (coder {coder}) does not decode "
                                 "to its symbols")
            bits += 8 * len(payload)
            x_hat = rt.decode(qz.dequantise(sym[None]), *im.shape[:2])[0].astype(np.float64)
            mse = float(((x_hat - im) ** 2).mean())
            d += mse / 127.5 ** 2
            psnrs.append(10 * np.log10(255 ** 2 / max(mse, 1e-10)))
            px += im.shape[0] * im.shape[1]
        out[q] = (d / len(crops), bits / px, float(np.mean(psnrs)))
    return out


def implied_lambda(points: dict[int, tuple[float, ...]], default: int) -> float | None:
    """The λ at which `default` minimises D + λ·R among points {quality: (D, R, ...)}: the geometric middle
    of the interval of such λ (it is [max over finer qualities of −ΔD/ΔR, min over coarser ones]); None when
    the default is optimal for no λ on these points."""
    d0, r0 = points[default][:2]
    lo = max([(d0 - d) / (r - r0) for d, r, *_ in points.values() if r > r0] or [0.0])
    hi = min([(d - d0) / (r0 - r) for d, r, *_ in points.values() if r < r0] or [float("inf")])
    if lo > hi or hi <= 0:
        return None
    if lo <= 0:
        return hi / 2 if math.isfinite(hi) else None
    return math.sqrt(lo * hi) if math.isfinite(hi) else 2 * lo


def _contexts(src_dir: Path, m: dict[str, Any], f_src: int, f_new: int) -> dict[str, int]:
    """Latent units of tile context of the rescaled networks: the source's reach (runtime.context_reach,
    else its manifest's tile_context) plus the cubic kernel's, on the new grid."""
    from aekit.export.runtime import context_reach

    s = f_src / f_new  # source pixels per new pixel
    out = {}
    for role in NETWORK_FILES:
        got = context_reach(src_dir / m["files"][role])
        if role == "encoder":  # reach in source pixels -> new pixels, plus the resize's taps (new pixels)
            reach = (got[0] if got else f_src * (m.get("tile_context") or {}).get("encoder", 4)) / s
            reach += CUBIC_REACH * (1 if s >= 1 else 1 / s)
            out[role] = max(1, math.ceil(reach / f_new - 1e-9))
        else:  # reach in latent units, plus the resize's taps in source pixels -> latent units
            reach = got[0] if got else (m.get("tile_context") or {}).get("decoder", 4)
            reach += CUBIC_REACH * (s if s >= 1 else 1) / f_src
            out[role] = max(1, math.ceil(reach - 1e-9))
    return out


def _default_quality(src_dir: Path, tmp: Path, m: dict[str, Any], new: dict[str, Any], n: int,
                     side: int, folder: str | Path | None) -> dict[str, Any]:
    """Set new["entropy"]'s default quality and checks (rescale_model); {"default_quality": how} for the
    record ({} for a model without qualities)."""
    if (m.get("latent") or {}).get("quantiser") != "integer":
        return {}
    crops, where = check_crops(m, n, side, folder)
    src_pts, pts = rd_points(src_dir, crops), rd_points(tmp, crops)
    src_default = int(m["entropy"]["default_quality"])
    lam = implied_lambda(src_pts, src_default)
    default = min(pts, key=lambda q: pts[q][0] + lam * pts[q][1]) if lam is not None else src_default
    new["entropy"] = {**new["entropy"], "default_quality": default,
                      "qualities": [{**e, "check": {"psnr": round(pts[e["quality"]][2], 3),
                                                    "bpp": round(pts[e["quality"]][1], 4), "images": len(crops)}}
                                    for e in new["entropy"]["qualities"]]}
    return {"default_quality": {
        "quality": default, "source_default": src_default, "lambda": lam and float(f"{lam:.4g}"),
        "images": len(crops), "side": side, "data": where,
        "rule": "the quality minimising D + λ·R (D: MSE on [-1, 1], R: payload bpp) on the crops, λ the one the "
                "source's default minimises it at (the source's default is kept where no λ makes it optimal)"}}


def rescale_model(src: str | Path, out: str | Path, ratio: int, force: bool = False, check_images: int = 8,
                  check_side: int = 256, check_data: str | Path | None = None) -> dict[str, Any]:
    """Write model folder `out`: model `src` (folder or shipped name) on a grid giving `ratio`.

    The fp32 encoder and decoder get their Resize (module docstring); the hyper networks, quantiser and
    entropy tables are copied unchanged; int8 and fp16 variants are not carried (their checks were made on
    the source's graphs). The new manifest records the source's id and name, the scale and the grids
    ("rescaled"), and gets its own model id. Returns that manifest.

    The default quality is chosen again: the same step costs more bits per pixel on the finer grid, so the
    source's default would spend bytes its own objective would not. Both models code `check_images` crops
    of at most check_side px (check_crops: of check_data, else the source's training data where it exists,
    else the bundled photos); λ is the one the source's default is optimal for on them (implied_lambda),
    and the new default minimises D + λ·R (export's rule, aekit.export.onnx). The qualities' "check"
    entries become the new model's figures on those crops. A tanh-latent model (no qualities) keeps its
    levels and latent histogram.

    Raises ModelError: no integer factor gives `ratio`, the same ratio, a graph below opset 18, `out`
    exists without force, or check_data has no readable image. `out` is written through a temporary
    folder, renamed into place when complete.
    """
    from aekit.export.manifest import resolve_model

    src_dir = resolve_model(src)
    m = load_manifest(src_dir)
    f_src, f_new = int(m["factor"]), rescaled_factor(m, ratio)
    if f_new == f_src:
        raise ModelError(f"model {m['model_id']} already has ratio {ratio}")
    out = Path(out)
    if out.exists() and not force:
        raise ModelError(f"{out}: exists (use --force to replace it)")
    io = graph_io(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(DIR_MODE)  # mkdtemp made it private (as export_model does)
    try:
        for role in NETWORK_FILES:
            rescale_graph(src_dir / m["files"][role], tmp / m["files"][role], role, f_src, f_new, io[role])
        files = {k: m["files"][k] for k in NETWORK_FILES}
        for k in COPIED_FILES:
            if k in m["files"]:
                shutil.copy(src_dir / m["files"][k], tmp / m["files"][k])
                files[k] = m["files"][k]
        new = {k: v for k, v in m.items() if k not in DROPPED and not k.startswith("_")}
        new.update(ratio=ratio, factor=f_new, files=files)
        new["padding"] = {**(m.get("padding") or {}), "multiple": f_new}
        new["tile_context"] = _contexts(src_dir, m, f_src, f_new)
        new["model_id"] = model_id_of(tmp / files["encoder"], tmp / files["decoder"], entropy_bytes(new))  # provisional
        save_manifest(tmp, new)
        chosen = _default_quality(src_dir, tmp, m, new, check_images, check_side, check_data)
        new["rescaled"] = {
            "from_model_id": m["model_id"], "from": src_dir.name, "from_ratio": m["ratio"], "from_factor": f_src,
            "scale": f_src / f_new, "encoder": f"Resize x (H, W) -> (H·{f_src}/{f_new}, W·{f_src}/{f_new}), bicubic "
            f"a={CUBIC_A}" + (", antialiased" if f_src < f_new else ""),
            "decoder": f"Resize x_hat (h·{f_src}, w·{f_src}) -> (h·{f_new}, w·{f_new}), bicubic a={CUBIC_A}"
            + (", antialiased" if f_new < f_src else ""),
            "command": f"aekit rescale {src} --ratio {ratio} --out {out}"
                       + (f" --check-images {check_images}" if check_images != 8 else "")
                       + (f" --check-data {check_data}" if check_data is not None else ""), **chosen}
        if isinstance(new.get("model_config"), dict):
            new["model_config"] = {**new["model_config"], "ratio": ratio}
        new["model_id"] = model_id_of(tmp / files["encoder"], tmp / files["decoder"], entropy_bytes(new))
        save_manifest(tmp, new)
        load_manifest(tmp)  # the checks every reader makes, on the finished folder
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_manifest(out)
