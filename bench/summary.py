"""Figures derived from a run's rows: ours/JPEG throughput ratios, and decode speed next to the quality it buys.

    report.ratios = compute_ratios(report.results); report.speed_quality = speed_vs_quality(report)
    print("\n".join(speed_quality_lines(report)))
"""

from __future__ import annotations

from typing import Any

from aekit.bench.schema import BenchReport, StageResult


def compute_ratios(results: list[StageResult]) -> list[dict[str, Any]]:
    """Best images/s (over batches) of each of our stages / the JPEG stage on the same device."""
    best: dict[tuple[str, str, str, str], StageResult] = {}
    for r in results:
        if r.status == "ok" and r.images_per_s:
            k = (r.backend, r.precision, r.size, r.stage)
            if k not in best or r.images_per_s > best[k].images_per_s:
                best[k] = r
    pairs = {"encode": "jpeg-encode", "compress": "jpeg-encode", "decode": "jpeg-decode",
             "decompress": "jpeg-decode"}
    out = []
    for (backend, prec, size, stage), r in sorted(best.items()):
        if stage not in pairs or backend.startswith("jpeg"):
            continue
        gpu = backend in ("ort-cuda", "ort-trt") or (backend.startswith("torch") and r.peak_device_bytes is not None)
        for jname in (("jpeg-nvjpeg", "jpeg-pillow") if gpu else ("jpeg-pillow",)):
            j = next((v for (b2, _, s2, st2), v in best.items() if b2 == jname and s2 == size and st2 == pairs[stage]), None)
            if j is not None:
                out.append({"size": size, "ours": f"{backend} {prec} {stage}", "ours_batch": r.batch,
                            "ours_images_per_s": r.images_per_s, "jpeg": f"{jname} {j.precision} {j.stage}",
                            "jpeg_batch": j.batch, "jpeg_images_per_s": j.images_per_s,
                            "ratio": r.images_per_s / j.images_per_s})
    return out


def speed_vs_quality(report: BenchReport) -> list[dict[str, Any]]:
    """Per image size: the best decode and decompress MP/s of any model backend, next to the mean PSNR
    and bits per pixel of whole .ael files at the model's default quality (the `_quality` row)."""
    out = []
    for q in report.quality:
        def best(stage: str) -> tuple[float | None, str]:
            rows = [r for r in report.results if r.status == "ok" and r.size == q["size"] and r.stage == stage
                    and r.megapixels_per_s and not r.backend.startswith(("jpeg", "entropy"))]
            top = max(rows, key=lambda r: r.megapixels_per_s, default=None)
            return (top.megapixels_per_s, f"{top.backend} {top.precision} batch {top.batch}") if top else (None, "")
        (dec, dec_at), (dez, _) = best("decode"), best("decompress")
        h, w = map(int, q["size"].split("x"))
        out.append({"size": q["size"], "decode_mp_per_s": dec, "decode_setting": dec_at, "decompress_mp_per_s": dez,
                    "psnr_db": q["ours_psnr_db"], "bpp": 8 * q["ours_bytes"] / (h * w),
                    "jpeg_psnr_db": q.get("jpeg_psnr_db")})
    return out


def speed_quality_lines(report: BenchReport) -> list[str]:
    """One line per size: decode MP/s and the quality it buys (`aekit bench` prints them after the table)."""
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    return [f"{r['size']}: decode {num(r['decode_mp_per_s'], '.2f')} MP/s ({r['decode_setting'] or 'not timed'}), "
            f"decompress {num(r['decompress_mp_per_s'], '.2f')} MP/s, for {r['psnr_db']:.2f} dB PSNR at "
            f"{r['bpp']:.3f} bpp (default quality; JPEG at equal bytes {num(r['jpeg_psnr_db'], '.2f')} dB)"
            for r in report.speed_quality]
