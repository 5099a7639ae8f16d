"""`aekit bench MODEL`: throughput of encode / entropy coding / decode vs JPEG on this machine.

    aekit bench models/photos-r4 --device cpu --batch 1,8,32 --size 256x256 --seconds 2 --json out.json
Exit codes: 0 every setting ran (or ran out of memory, which is a result); 2 some setting failed
(no GPU, missing provider, bad size ...) -- its line is printed, the others still ran.
"""

from __future__ import annotations

import argparse
import logging


def _csv(kind):
    def parse(text: str):
        try:
            vals = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{text!r}: empty list")
        return vals

    return parse


def _batch(text: str) -> int:
    b = int(text)
    if b < 1:
        raise ValueError(f"batch {b} must be >= 1")
    return b


def _size(text: str) -> tuple[int, int]:
    from aekit.bench.inputs import parse_size

    return parse_size(text.strip())


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    from aekit.bench import probe

    probe.register(sub)  # `aekit probe`: an evaluation of a model's latents
    p = sub.add_parser("bench", help="measure encode/decode throughput against JPEG on this hardware",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Time each stage (encode, quantise+entropy code, entropy decode, decode, "
                                   "in-memory compress/decompress, optional file-to-file folder run) for every "
                                   "backend x precision x size x batch, and JPEG on the same images.")
    p.add_argument("model", type=model_arg, help="exported model folder (manifest.json) or shipped model's name")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--backend", default="ort", type=_csv(str),
                   help="comma list: ort | torch | all, or ort-cpu, ort-cuda, ort-trt, torch-eager, torch-compile")
    p.add_argument("--batch", default="1,8,64,256", type=_csv(_batch), help="batch sizes, comma list")
    p.add_argument("--size", default=None, type=_csv(_size),
                   help="image sizes HxW, comma list (default: the images' own size if uniform, else 256x256)")
    p.add_argument("--precision", default="fp32", type=_csv(str), help="comma list of fp32, fp16, bf16")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per stage and setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--images", help="image folder (default: the model's validation/training data)")
    p.add_argument("--max-images", type=int, default=32, help="distinct images loaded (batches repeat them)")
    p.add_argument("--folder", action="append", default=[],
                   help="also time `aekit compress`/`decompress` file to file on this folder (repeatable)")
    p.add_argument("--folder-limit", type=_csv(int), default=None,
                   help="comma list: run the folder stage on its first N files (e.g. 1000,10000)")
    p.add_argument("--no-jpeg", action="store_true", help="skip the JPEG baselines")
    p.add_argument("--no-entropy", action="store_true", help="skip entropy coding and in-memory compress/decompress")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--checkpoint", help="PyTorch weights for torch backends (default: the manifest's)")
    p.add_argument("--trt-cache", help="TensorRT engine cache folder (default: $TMPDIR/aekit-trt-cache)")
    p.add_argument("--compile-mode", help="torch.compile mode (default: max-autotune on CUDA, default on CPU)")
    p.add_argument("--cuda-graph", action="store_true", help="ort-cuda: capture CUDA graphs (one launch per run)")
    p.add_argument("--nhwc", action="store_true", help="ort-cuda: prefer_nhwc convolutions (fp16 tensor cores)")
    p.add_argument("--json", dest="json_out", help="write the full record here")
    p.add_argument("--plot", help="throughput-vs-batch PNG (default: beside --json, same name .png)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from aekit.bench.report import plot, table, write_json
    from aekit.bench.run import run_bench
    from aekit.bench.schema import BenchConfig
    from aekit.bench.summary import speed_quality_lines

    cfg = BenchConfig(model=args.model, device=args.device, backends=args.backend, batches=args.batch,
                      sizes=args.size or (), precisions=args.precision, seconds=args.seconds, warmup=args.warmup,
                      images=args.images, max_images=args.max_images, jpeg=not args.no_jpeg,
                      entropy=not args.no_entropy, folders=tuple(args.folder), folder_limits=args.folder_limit or (),
                      threads=args.threads, checkpoint=args.checkpoint, trt_cache=args.trt_cache,
                      compile_mode=args.compile_mode, cuda_graph=args.cuda_graph, nhwc=args.nhwc)

    logger = logging.getLogger(__name__)

    def log(msg: str) -> None:  # progress lines; --quiet (or aekit -q) leaves only the table
        if not args.quiet:
            logger.info(msg)

    report = run_bench(cfg, log)
    print(table(report))
    for line in speed_quality_lines(report):  # speed next to the quality it buys
        print(line)
    if args.json_out:
        logger.info("wrote %s", write_json(report, args.json_out))
    png = args.plot or (str(Path(args.json_out).with_suffix(".png")) if args.json_out else None)
    if png:
        try:
            if out := plot(report, png):
                logger.info("wrote %s", out)
        except ImportError as e:
            logger.warning("aekit bench: no plot (%s; pip install matplotlib)", e)
    ran = any(r.status == "ok" for r in report.results)
    return 2 if report.failed or not ran else 0
