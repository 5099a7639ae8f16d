"""Rate-distortion evaluation of codec models on an image folder against JPEG, WebP and AVIF (Pillow).

    aekit evaluate data/photos/test -m models/photos-r4 -m runs/klt-r4 -o codec/results/photos
For each model and quality (every quality a rate-distortion model offers; --levels for tanh
models): mean file bytes (header included), bits per pixel, PSNR and MS-SSIM of the decoded
images (per-image means), chroma ratio and border/interior PSNR; JPEG, WebP and AVIF are
swept over quality. Each model's curve gets BD-rate and BD-PSNR (Bjøntegaard, `bjontegaard`
package) against every baseline and against the klt curve (the klt models given with -m).
Writes results.json, results.md and rd.png. Torch-free (metrics in aekit.metrics).
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aekit.images import atomic_write_bytes, check_output_folder, is_image_name
from aekit.machine import cpu_name
from aekit.codec.core import Codec, CodecConfig, Decoder, load_for_model
from aekit.codec import baseline
from aekit.codec.jobs import walk
from aekit.export.manifest import load_manifest
from aekit.export.entropy import RDOQ_T
from aekit.metrics import bd_metrics, border_interior_psnr, chroma_ratio, msssim_batch, msssim_scales, psnr_batch

log = logging.getLogger(__name__)

QUALITIES = (1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)


@dataclass
class EvalConfig:
    src: str  # image folder (searched recursively) or one image
    models: list[str]  # exported model folders
    out: str = "eval"  # output folder
    limit: int = 0  # first N images (0: all)
    tile_px: int = 0  # also code in tiles of this side to measure seams (0: off)
    levels: list[int] = field(default_factory=lambda: [0])  # tanh models: latent levels (0: the model's)
    model_qualities: list[int] = field(default_factory=list)  # RD models: qualities to run ([]: all offered)
    name: str = ""  # data set name for the table and plot
    device: str = "auto"
    int8: bool = False  # code with the models' int8 encoder/decoder variants where they ship them (aekit add-int8)
    rdoq: float = RDOQ_T  # rate-distortion models: RDOQ's price of a bit (CodecConfig.rdoq; 0: plain rounding)
    qualities: tuple[int, ...] = QUALITIES  # JPEG and WebP quality sweep
    chunk: int = 512  # images loaded at once (memory bound)
    command: str = field(default_factory=lambda: shlex.join(["aekit"] + sys.argv[1:]))


class _Acc:
    """Per-method sums over images: bytes, bpp, PSNR, MS-SSIM, chroma ratio, border/interior PSNR."""

    def __init__(self) -> None:
        self.n, self.bytes, self.bpp, self.psnr, self.msssim, self.n_ms = 0, 0.0, 0.0, 0.0, 0.0, 0
        self.chroma: list[float] = []
        self.border: list[float] = []
        self.interior: list[float] = []

    def add(self, nbytes: np.ndarray, pixels: np.ndarray, psnr: np.ndarray, ms: np.ndarray,
            orig: np.ndarray, rec: np.ndarray, band: int) -> None:
        self.n += len(nbytes)
        self.bytes += float(nbytes.sum())
        self.bpp += float((8 * nbytes / pixels).sum())
        self.psnr += float(psnr.sum())
        ok = ~np.isnan(ms)
        self.msssim += float(ms[ok].sum())
        self.n_ms += int(ok.sum())
        for a, b in zip(orig, rec):
            c = chroma_ratio(a, b)
            if c is not None:
                self.chroma.append(c)
            bo, ii = border_interior_psnr(a, b, band)
            self.border.append(bo)
            self.interior.append(ii)

    def row(self) -> dict[str, Any]:
        n = max(self.n, 1)

        def mean(v: list[float]) -> float | None:
            return float(np.mean(v)) if v else None

        return {"images": self.n, "mean_bytes": self.bytes / n, "bpp": self.bpp / n, "psnr": self.psnr / n,
                "msssim": self.msssim / self.n_ms if self.n_ms else None, "chroma_ratio": mean(self.chroma),
                "border_psnr": mean(self.border), "interior_psnr": mean(self.interior)}



def _images(cfg: EvalConfig):
    """Chunks of (path, native image (H, W, 1|3), mode), streamed."""
    src = Path(cfg.src)
    paths = ((p for p, _ in walk(src, is_image_name) if p is not None) if src.is_dir() else iter([src]))
    chunk, seen = [], 0
    for p in paths:
        if cfg.limit and seen >= cfg.limit:
            break
        arr, mode = load_for_model(p, 3)
        chunk.append((p, arr[:, :, :1] if mode == "L" else arr, mode))
        seen += 1
        if len(chunk) >= cfg.chunk:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _by_shape(items: list) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for it in items:
        groups.setdefault(it[1].shape, []).append(it)
    return groups


def _eval_codec(codec: Codec, decoder: Decoder, group: list, acc: _Acc) -> int:
    """Code one equal-shape group with a model; returns how many images it refused (RGB on gray)."""
    usable = [it for it in group if not (codec.channels == 1 and it[2] == "RGB")]
    if not usable:
        return len(group)
    orig = np.stack([it[1] for it in usable])  # (B, H, W, C) native
    inp = np.repeat(orig, 3, axis=3) if codec.channels == 3 and orig.shape[3] == 1 else orig
    files = codec.compress_batch(inp, [it[2] for it in usable])
    rec = np.stack([decoder.decompress(f)[0] for f in files])
    px = np.full(len(files), orig.shape[1] * orig.shape[2], dtype=np.float64)
    acc.add(np.array([len(f) for f in files], dtype=np.float64), px, psnr_batch(orig, rec), msssim_batch(orig, rec),
            orig, rec, codec.factor)
    return len(group) - len(usable)


def _eval_pillow(group: list, fmt: str, q: int, acc: _Acc) -> None:
    orig = np.stack([it[1] for it in group])
    out = [baseline.roundtrip(im, fmt, q) for im in orig]
    rec = np.stack([o[1] for o in out])
    px = np.full(len(orig), orig.shape[1] * orig.shape[2], dtype=np.float64)
    acc.add(np.array([o[0] for o in out], dtype=np.float64), px, psnr_batch(orig, rec), msssim_batch(orig, rec),
            orig, rec, 8)  # 8: the JPEG block


def _at_bytes(sweep: list[dict[str, Any]], target: float, key: str) -> float | None:
    """Metric of a quality sweep linearly interpolated at mean bytes = target (None outside)."""
    pts = sorted((r["mean_bytes"], r[key]) for r in sweep if r[key] is not None)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs or target < xs[0] or target > xs[-1]:
        return None
    return float(np.interp(target, xs, ys))


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation and write results.json, results.md, rd.png under cfg.out."""
    check_output_folder(Path(cfg.out), "-o")  # a file there fails now, not after the whole evaluation
    t0 = time.monotonic()
    runs = _runs(cfg)  # (model, levels, quality): one RD point each
    codecs = {r: Codec(r[0], CodecConfig(device=cfg.device, levels=r[1], quality=r[2], int8=cfg.int8,
                                                rdoq=cfg.rdoq)) for r in runs}
    first = {m: next(r for r in runs if r[0] == m) for m in cfg.models}
    tiled = {m: Codec(m, CodecConfig(device=cfg.device, full_res_max_pixels=0, tile_px=cfg.tile_px,
                                     levels=first[m][1], quality=first[m][2], int8=cfg.int8, rdoq=cfg.rdoq))
             for m in cfg.models} if cfg.tile_px else {}
    # each model's files decode with its own folder (two folders may share a model id: one with a channel context)
    dec = {m: Decoder([codecs[first[m]].rt.dir], CodecConfig(device=cfg.device, int8=cfg.int8)) for m in cfg.models}
    dec_tiled = {m: Decoder([codecs[first[m]].rt.dir], CodecConfig(device=cfg.device, full_res_max_pixels=0,
                                                                   tile_px=cfg.tile_px, int8=cfg.int8))
                 for m in cfg.models}
    accs: dict[str, _Acc] = {}
    refused: dict[tuple, int] = {r: 0 for r in runs}
    scales: set[int] = set()
    n, skipped = 0, 0
    gray = [m for m in cfg.models if codecs[first[m]].channels == 1]
    for chunk in _images(cfg):
        if gray:  # a gray model refuses colour images (as compress does): every curve, JPEG's too, skips them
            kept = [it for it in chunk if it[2] != "RGB"]
            skipped, chunk = skipped + len(chunk) - len(kept), kept
        n += len(chunk)
        for shape, group in _by_shape(chunk).items():
            scales.add(msssim_scales(shape[0], shape[1]))
            for r in runs:
                refused[r] += _eval_codec(codecs[r], dec[r[0]], group, accs.setdefault(f"codec:{r}", _Acc()))
            for m in cfg.models:
                if m in tiled:
                    _eval_codec(tiled[m], dec_tiled[m], group, accs.setdefault(f"tiled:{m}", _Acc()))
            for fmt in baseline.available():
                for q in cfg.qualities:
                    _eval_pillow(group, fmt, q, accs.setdefault(f"{fmt}:{q}", _Acc()))
        log.info("evaluate: %d images, %.0f s", n, time.monotonic() - t0)
    if skipped:
        log.warning("warning: %d colour image(s) skipped for every model and baseline: %s take(s) gray images "
                    "(evaluate gray and colour models on separate runs)", skipped, ", ".join(map(str, gray)))
    if not n:
        raise ValueError(f"{cfg.src}: no images to evaluate" + (f" ({skipped} colour images skipped)" if skipped else ""))
    result = _summarise(cfg, runs, codecs, accs, refused, n, sorted(scales), time.monotonic() - t0)
    result["skipped_rgb"] = skipped
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result["markdown"] = _markdown(result)
    atomic_write_bytes(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    atomic_write_bytes(out / "results.md", result["markdown"].encode())
    _plot(result, out / "rd.png")
    return result


def _summarise(cfg: EvalConfig, runs: list[tuple], codecs: dict[tuple, Codec], accs: dict[str, _Acc],
               refused: dict[tuple, int], n: int, scales: list[int], seconds: float) -> dict[str, Any]:
    sweeps = {fmt: [dict(quality=q, **accs[f"{fmt}:{q}"].row()) for q in cfg.qualities] for fmt in baseline.available()}
    models = []
    for r in runs:
        m = r[0]
        row = dict(model=m, model_id=codecs[r].model_id, arch=codecs[r].rt.manifest.get("arch"),
                   levels=codecs[r].levels, quality=r[2], **accs[f"codec:{r}"].row(), refused_rgb=refused[r])
        if f"tiled:{m}" in accs and r == _first_run(runs, m):
            t = accs[f"tiled:{m}"].row()
            row["tiled"] = {"tile_px": cfg.tile_px, **t, "seam_cost_psnr_db": row["psnr"] - t["psnr"]}
        for fmt, sweep in sweeps.items():
            row[fmt.lower() + "_at_equal_bytes"] = {
                "psnr": _at_bytes(sweep, row["mean_bytes"], "psnr"),
                "msssim": _at_bytes(sweep, row["mean_bytes"], "msssim"),
                "min_mean_bytes": min(r["mean_bytes"] for r in sweep),
                "max_mean_bytes": max(r["mean_bytes"] for r in sweep),
            }
        models.append(row)
    return {
        "format": "aekit-codec-eval", "version": 2, "data": str(cfg.src), "name": cfg.name, "images": n,
        "msssim_scales": scales, "models": models, "sweeps": sweeps, "bd": _bd(models, sweeps), "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "processor": cpu_name(),
                    "python": platform.python_version(), "pillow": Image.__version__,
                    "onnxruntime_providers": _device(cfg)},
        "seconds": round(seconds, 1),
    }


def _runs(cfg: EvalConfig) -> list[tuple[str, int, int]]:
    """(model, levels, quality) per RD point: every offered quality of a rate-distortion model
    (or cfg.model_qualities), every cfg.levels of a tanh model."""
    runs = []
    for m in cfg.models:
        man = load_manifest(m)
        if man["latent"].get("quantiser") == "integer":
            offered = [q["quality"] for q in man["entropy"]["qualities"]]
            mine = [(m, 0, q) for q in offered if not cfg.model_qualities or q in cfg.model_qualities]
            if not mine:
                raise ValueError(f"{m}: no quality {', '.join(map(str, cfg.model_qualities))} "
                                 f"(have: {', '.join(map(str, offered))})")
            runs += mine
        else:
            runs += [(m, lv, 0) for lv in cfg.levels]
    rd = {r[0] for r in runs if r[2]}
    if cfg.model_qualities and not rd:
        raise ValueError("--quality is for rate-distortion models (gdn, gdn-hp, klt) and no -m is one: use --levels")
    if any(cfg.levels) and len(rd) == len(cfg.models):
        raise ValueError("--levels is for tanh-latent models and no -m is one: use --quality")
    return runs


def _first_run(runs: list[tuple], model: str) -> tuple:
    return next(r for r in runs if r[0] == model)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(rate, quality) points -> the upper-left envelope: each kept point beats every cheaper one."""
    out: list[tuple[float, float]] = []
    for r, d in sorted(points):
        if not out or d > out[-1][1]:
            out.append((r, d))
    return out


def _bd(models: list[dict[str, Any]], sweeps: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """BD-rate / BD-PSNR (bpp, PSNR) of each model's curve against each baseline and the klt curve.

    The klt curve is the envelope of every point of the klt models evaluated (one model per
    rate weight, each with its qualities); a klt model is not compared with itself.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    for m in models:
        curves.setdefault(m["model"], []).append((m["bpp"], m["psnr"]))
    anchors = {fmt: pareto([(s["bpp"], s["psnr"]) for s in sw]) for fmt, sw in sweeps.items()}
    klt = pareto([(m["bpp"], m["psnr"]) for m in models if m.get("arch") == "klt"])
    if klt:
        anchors["klt"] = klt
    out = []
    for name, pts in curves.items():
        arch = next(m.get("arch") for m in models if m["model"] == name)
        row: dict[str, Any] = {"model": name, "points": len(pts)}
        for anchor, apts in anchors.items():
            if anchor == "klt" and arch == "klt":
                continue
            row[anchor] = bd_metrics(apts, pareto(pts))
        out.append(row)
    return out


def label(m: dict[str, Any]) -> str:
    return f"{Path(m['model']).name} " + (f"q{m['quality']}" if m.get("quality") else f"L{m['levels']}")


def _device(cfg: EvalConfig) -> str:
    from aekit.export.runtime import select_providers

    return ",".join(select_providers(cfg.device))


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _markdown(r: dict[str, Any]) -> str:
    fmts = list(r["sweeps"])
    lines = [f"### {r['name'] or r['data']}: {r['images']} images (MS-SSIM scales: {r['msssim_scales']})", "",
             "| model, quality / levels | mean bytes | bpp | PSNR dB | MS-SSIM | chroma ratio | border / interior PSNR | "
             + " | ".join(f"{f} PSNR / MS-SSIM at equal bytes" for f in fmts) + " | seam cost (tiled) |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(fmts) + "---:|"]
    for m in r["models"]:
        def cmp(x: dict[str, Any]) -> str:
            if x["psnr"] is None and m["mean_bytes"] > x["max_mean_bytes"]:
                return f"n/a (largest {x['max_mean_bytes']:.0f} B)"
            if x["psnr"] is None:
                return f"n/a (smallest {x['min_mean_bytes']:.0f} B)"
            return f"{x['psnr']:.2f} / {_fmt(x['msssim'], '.4f')}"

        seam = f"{m['tiled']['seam_cost_psnr_db']:+.3f} dB @ {m['tiled']['tile_px']} px" if "tiled" in m else "—"
        lines.append(f"| {label(m)} | {m['mean_bytes']:.1f} | {m['bpp']:.3f} | {m['psnr']:.2f} | "
                     f"{_fmt(m['msssim'], '.4f')} | {_fmt(m.get('chroma_ratio'), '.3f')} | "
                     f"{_fmt(m.get('border_psnr'), '.2f')} / {_fmt(m.get('interior_psnr'), '.2f')} | "
                     + " | ".join(cmp(m[f.lower() + "_at_equal_bytes"]) for f in fmts) + f" | {seam} |")
    lines += ["", "| quality | " + " | ".join(f"{f} bpp | {f} PSNR | {f} MS-SSIM" for f in fmts) + " |",
              "|---:|" + "---:|---:|---:|" * len(fmts)]
    for rows in zip(*(r["sweeps"][f] for f in fmts)):
        lines.append(f"| {rows[0]['quality']} | " + " | ".join(
            f"{a['bpp']:.3f} | {a['psnr']:.2f} | {_fmt(a['msssim'], '.4f')}" for a in rows) + " |")
    if r.get("bd"):
        anchors = [a for a in fmts + ["klt"] if any(a in b for b in r["bd"])]
        lines += ["", "BD-rate (% bits at equal PSNR; < 0 saves bits) and BD-PSNR (dB at equal rate) of each "
                  "model's curve (its qualities) against each anchor, over the overlapping range:", "",
                  "| model | " + " | ".join(f"vs {a}" for a in anchors) + " |", "|---|" + "---:|" * len(anchors)]
        for b in r["bd"]:
            cells = []
            for a in anchors:
                v = b.get(a)
                if v is None:
                    cells.append("—")
                elif v["bd_rate"] is None:
                    cells.append(f"n/a (no PSNR overlap) / {_fmt(v['bd_psnr'], '+.2f')} dB")
                else:
                    cells.append(f"{v['bd_rate']:+.1f} % / {_fmt(v['bd_psnr'], '+.2f')} dB")
            lines.append(f"| {Path(b['model']).name} ({b['points']} pts) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "msssim", "MS-SSIM")):
        for fmt, style in (("JPEG", "s-"), ("WEBP", "o-"), ("AVIF", "^-")):
            if fmt not in r["sweeps"]:
                continue
            pts = [(s["bpp"], s[key]) for s in r["sweeps"][fmt] if s[key] is not None]
            ax.plot(*zip(*pts), style, ms=3, label=f"{fmt} (q {r['sweeps'][fmt][0]['quality']}-"
                                                   f"{r['sweeps'][fmt][-1]['quality']})")
        by_model: dict[str, list] = {}
        for m in r["models"]:
            by_model.setdefault(m["model"], []).append(m)
        for name, ms in by_model.items():
            pts = sorted((m["bpp"], m[key]) for m in ms if m[key] is not None)
            if pts:
                what = (f"qualities {ms[0]['quality']}-{ms[-1]['quality']}" if ms[0].get("quality") else
                        "levels " + ", ".join(str(m["levels"]) for m in sorted(ms, key=lambda m: -m["levels"])))
                ax.plot(*zip(*pts), "*-", ms=8, lw=1.5 if ms[0].get("arch") == "klt" else 2.2,
                        label=f"aekit {Path(name).name} ({what})")
            for m in ms:
                if "tiled" in m and m["tiled"][key] is not None:
                    ax.plot(m["tiled"]["bpp"], m["tiled"][key], "x", ms=9, color="k",
                            label=f"{Path(name).name} tiled {m['tiled']['tile_px']} px")
        ax.set_xlabel("bits per pixel (mean over images)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        xs = [m["bpp"] for m in r["models"]]
        sweep_max = max(s["bpp"] for f in r["sweeps"] for s in r["sweeps"][f])
        ax.set_xlim(0, max(max(xs) * 1.1, min(sweep_max, max(xs) * 2.5)) if xs else None)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{r['name'] or r['data']}: {r['images']} images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
