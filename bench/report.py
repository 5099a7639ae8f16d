"""Bench output: a human table, the JSON record and a throughput-vs-batch plot.

    print(table(report)); write_json(report, "bench/results/x.json"); plot(report, "bench/results/x.png")
    python -m aekit.bench.report bench/results/*.json     # the tables again, from recorded JSON
"""

from __future__ import annotations

import json
from pathlib import Path

from aekit.images import atomic_write_bytes
from aekit.bench.schema import BenchReport, StageResult


def _mib(n: int | None) -> str:
    return f"{n / 2**20:.0f}" if n else "-"


def _f(v: float | None, fmt: str) -> str:
    return format(v, fmt) if v is not None else "-"


def table(report: BenchReport) -> str:
    """Markdown table of every timed stage, then quality at equal size, ratios and problems."""
    env, out = report.environment, []
    out.append(f"device: {env.get('device_name')} ({report.config['resolved_device']}), "
               f"{report.config['threads_used']} threads; model {report.model['model_id']} "
               f"({report.model['channels']}-ch, 1/{report.model['ratio']}); peak {report.peak.get('source')}")
    out += ["", "best images/s per stage (batch):", "", summary(report), "", "every setting:", ""]
    out.append("| backend | prec | size | batch | stage | img/s | MP/s | p50 ms | p99 ms | spread | TFLOP/s | % peak | host MiB | dev MiB |")
    out.append("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report.results:
        if r.status != "ok":
            continue
        spread = r.timing.get("rel_spread") if r.timing else None
        out.append(f"| {r.backend} | {r.precision} | {r.size} | {r.batch} | {r.stage} | {_f(r.images_per_s, '.1f')} | "
                   f"{_f(r.megapixels_per_s, '.2f')} | {_f(r.latency_p50_ms, '.2f')} | {_f(r.latency_p99_ms, '.2f')} | "
                   f"{_f(spread and spread * 100, '.0f')}% | {_f(r.achieved_tflops, '.4f')} | "
                   f"{_f(r.peak_fraction and r.peak_fraction * 100, '.2f')} | {_mib(r.peak_host_bytes)} | "
                   f"{_mib(r.peak_device_bytes)} |")
    if report.quality:
        out += ["", "| size | ours B/image | ours PSNR | JPEG quality | JPEG B/image | JPEG PSNR |", "|---|---:|---:|---:|---:|---:|"]
        for q in report.quality:
            out.append(f"| {q['size']} | {q['ours_bytes']:.0f} | {q['ours_psnr_db']:.2f} | {q['jpeg_quality']} | "
                       f"{q['jpeg_bytes']:.0f} | {q['jpeg_psnr_db']:.2f} |")
    if report.ratios:
        out += ["", "| size | ours (best batch) | img/s | JPEG (best batch) | img/s | ours/JPEG |", "|---|---|---:|---|---:|---:|"]
        for x in report.ratios:
            out.append(f"| {x['size']} | {x['ours']} (b{x['ours_batch']}) | {x['ours_images_per_s']:.1f} | {x['jpeg']} "
                       f"(b{x['jpeg_batch']}) | {x['jpeg_images_per_s']:.1f} | {x['ratio']:.2f}x |")
    if report.folders:
        out += ["", "| folder | files | compress img/s | peak RSS MiB | decompress img/s | peak RSS MiB | B/latent file | status |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
        for f in report.folders:
            c, d = f.get("compress", {}), f.get("decompress", {})
            out.append(f"| {f['folder']} | {f.get('files', '-')} | {_f(c.get('images_per_s'), '.0f')} | "
                       f"{_mib(c.get('peak_rss_bytes'))} | {_f(d.get('images_per_s'), '.0f')} | {_mib(d.get('peak_rss_bytes'))} | "
                       f"{_f(f.get('latent_bytes', 0) / max(f.get('latent_files', 0), 1) if f.get('latent_files') else None, '.0f')} | "
                       f"{f['status']}{': ' + f['message'] if f.get('message') else ''} |")
    problems = [r for r in report.results if r.status != "ok"]
    if problems:
        out += ["", "not run:"]
        seen = set()
        for r in problems:
            if r.message not in seen:
                seen.add(r.message)
                out.append(f"- [{r.status}] {r.message}")
    return "\n".join(out)


def summary(report: BenchReport) -> str:
    """Best images/s (and its batch) per size x backend x precision for each stage: the headline."""
    stages = ("encode", "decode", "compress", "decompress", "entropy-encode", "entropy-decode", "jpeg-encode", "jpeg-decode")
    best: dict[tuple[str, str, str], dict[str, StageResult]] = {}
    for r in report.results:
        if r.status == "ok" and r.images_per_s:
            row = best.setdefault((r.size, r.backend, r.precision), {})
            if r.stage not in row or r.images_per_s > row[r.stage].images_per_s:
                row[r.stage] = r
    present = [st for st in stages if any(st in v for v in best.values())]
    out = ["| size | backend | prec | " + " | ".join(present) + " | peak host MiB | peak dev MiB |",
           "|---|---|---|" + "---:|" * (len(present) + 2)]
    for (size, backend, prec), row in sorted(best.items(), key=lambda kv: (int(kv[0][0].split("x")[0]), kv[0][1], kv[0][2])):
        cells = [f"{row[st].images_per_s:.1f} (b{row[st].batch})" if st in row else "" for st in present]
        host = max((r.peak_host_bytes or 0) for r in row.values())
        dev = max((r.peak_device_bytes or 0) for r in row.values())
        out.append(f"| {size} | {backend} | {prec} | " + " | ".join(cells) + f" | {_mib(host)} | {_mib(dev)} |")
    return "\n".join(out)


def write_json(report: BenchReport, path: str | Path) -> Path:
    return atomic_write_bytes(Path(path), (json.dumps(report.to_dict(), indent=1, default=str) + "\n").encode())


def plot(report: BenchReport, path: str | Path) -> Path | None:
    """Images/s vs batch size (log-log), one panel per size, encode and decode lines per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report.results if r.status == "ok" and r.stage in ("encode", "decode", "jpeg-encode", "jpeg-decode",
                                                                        "compress", "decompress")]
    sizes = sorted({r.size for r in ok}, key=lambda s: int(s.split("x")[0]))
    if not ok:
        return None
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        lines: dict[tuple[str, str, str], list[StageResult]] = {}
        for r in ok:
            if r.size == size:
                lines.setdefault((r.backend, r.precision, r.stage), []).append(r)
        for (backend, prec, stage), rs in sorted(lines.items()):
            rs.sort(key=lambda r: r.batch)
            style = "--" if backend.startswith("jpeg") else (":" if stage in ("compress", "decompress") else "-")
            marker = "o" if "encode" in stage or stage == "compress" else "s"
            ax.plot([r.batch for r in rs], [r.images_per_s for r in rs], style, marker=marker,
                    label=f"{backend} {prec} {stage}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{size} on {report.environment.get('device_name')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"aekit bench: model {report.model['model_id']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def load_report(path: str | Path) -> BenchReport:
    """A recorded JSON back into a BenchReport (for tables and plots of old runs)."""
    d = json.loads(Path(path).read_text())
    if d.get("format") != "aekit-bench":
        raise ValueError(f"{path}: not an aekit bench record")
    if d.get("format_version") != 1:
        raise ValueError(f"{path}: bench record version {d.get('format_version')} unsupported (expected 1)")
    d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
    d["results"] = [StageResult(**r) for r in d["results"]]
    return BenchReport(**d)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(f"## {arg}\n")
        print(table(load_report(arg)))
        print()
