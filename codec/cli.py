"""`aekit compress`, `aekit decompress` and `aekit evaluate` (registered through aekit.commands).

    aekit compress SRC -m MODEL -o DST [--overwrite]      # file or tree -> mirrored .ael files
    aekit decompress SRC -o DST [-m MODELS]               # .ael file or tree -> PNG images
    aekit evaluate SRC -m MODEL [-m MODEL2] -o OUTDIR     # RD vs JPEG and WebP: JSON, markdown, PNG
Exit codes: 0 all files done; 2 usage error or any file failed (one line each); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aekit.cli import at_least
from aekit.codec.format import SUFFIX

EXIT_OK, EXIT_ERROR = 0, 2
EXIT_DOC = "Exit codes: 0 all files done (or skipped as existing); 2 usage error or any file failed; 130 interrupted."
FMT = argparse.ArgumentDefaultsHelpFormatter


MIN_MEMORY_MB = 64  # below this every call is cut into tiny tiles (1 MiB made a 512² folder 18x slower)


def common(p: argparse.ArgumentParser) -> None:
    """Options of every folder job (compress, decompress, denoise): resume, batching, workers, memory, limits."""
    from aekit.codec.core import CodecConfig
    from aekit.codec.jobs import JobConfig
    from aekit.export.entropy import ZSTD_LEVEL, ZSTD_LEVEL_SMALLEST

    c, j = CodecConfig(), JobConfig()
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-existing", action="store_true", default=True,
                   help="skip outputs that the folder's ledger shows were made from the same source with the same "
                        "model and settings, so an interrupted run resumes; others are redone (always on unless "
                        "--overwrite)")
    p.add_argument("--batch-size", type=at_least(1), default=c.batch_size,
                   help="images of equal size per ONNX call at most (fewer when --memory-mb says so)")
    p.add_argument("--workers", type=at_least(0), default=j.workers,
                   help="model calls at once over images and tiles, one onnxruntime thread each "
                        "(0: the usable cores); outputs are the same for any number")
    p.add_argument("--memory-mb", type=at_least(MIN_MEMORY_MB, " (smaller budgets cut every image into tiny tiles)"),
                   default=c.memory_mb,
                   help="MiB of estimated model activations at once (CPU): batches are sized so one call takes "
                        "at most half, a large image's tiles a quarter of what its decoded pixels leave (at least "
                        "a sixteenth), and calls wait for room")
    p.add_argument("--held-mb", type=at_least(1), default=j.held_mb,
                   help="MiB of decoded files read ahead or waiting for a batch")
    p.add_argument("--smallest", action="store_true",
                   help=f"spend time for smaller files: zstd trial at level {ZSTD_LEVEL_SMALLEST} instead of "
                        f"{ZSTD_LEVEL} (compress), PNG zlib level 9 instead of 1 (decompress; same pixels)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default=c.device,
                   help=f"onnxruntime provider (default {c.device}: CUDA when onnxruntime-gpu sees a GPU, else CPU)")
    p.add_argument("--threads", type=at_least(0), default=None,
                   help=f"onnxruntime intra-op threads per call, spinning off (0: every core; default {c.threads}, "
                        "with --engine ray the actor's CPUs); more workers beat more threads on shared cores")
    p.add_argument("--tile", type=int, default=c.tile_px,
                   help="largest tile side in pixels for large images (smaller when --memory-mb needs)")
    p.add_argument("--full-res-max-pixels", type=int, default=c.full_res_max_pixels,
                   help="images above this many pixels are coded in overlapping tiles")
    p.add_argument("--max-pixels", type=int, default=c.max_pixels,
                   help="refuse images above this many pixels (decompression bombs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only on a terminal)")


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.codec.core import MODELS_ENV, CodecConfig
    from aekit.codec.jobs import JobConfig
    from aekit.export.engine_ray import add_engine_args
    from aekit.export.manifest import model_arg

    c, j = CodecConfig(), JobConfig()

    p = sub.add_parser("compress", help="compress images (file or folder tree) into .ael latent files",
                       formatter_class=FMT, description="Compress an image file or folder tree into mirrored "
                       f".ael latent files (a/b.png -> OUT/a/b.png{SUFFIX}). {EXIT_DOC}")
    p.add_argument("src", help="image file or folder (searched recursively)")
    p.add_argument("-m", "--model", required=True, type=model_arg,
                   help="exported model folder, or a shipped model's name (`aekit models`)")
    p.add_argument("-o", "--out", required=True, help=f"output folder (mirrors SRC) or a single {SUFFIX} file")
    p.add_argument("--levels", type=int, default=c.levels,
                   help="tanh-latent models: latent quantisation levels, 2..256 (0: the model's); "
                        "fewer = smaller files, lower quality")
    p.add_argument("--quality", type=int, default=c.quality,
                   help="rate-distortion models (gdn, klt): quality 1 (smallest files) .. N (best; "
                        "`aekit info MODEL` lists them); default 0: the model's default quality")
    p.add_argument("--rdoq", type=float, default=c.rdoq,
                   help="rate-distortion models: rate-distortion optimised rounding, the price of a bit in "
                        "squared quantisation steps (a symbol moves one step toward its most probable value "
                        "where that saves enough bits: 5-7 %% BD-rate on photos, most at low qualities); 0: plain "
                        "rounding. Any reader decodes the files")
    p.add_argument("--no-channel-context", dest="channel_context", action="store_false",
                   help="models with a channel context (photos-r9, photos-r4): do not try coder 6 (files 2-5 %% "
                        "larger, compress about 1.5x faster; README: Codec quality)")
    p.add_argument("--no-spatial-context", dest="spatial_context", action="store_false",
                   help="rate-distortion models: do not try coders 7/8 (the neighbours' prediction of the mean; "
                        "format version 7): files readable by aekit before version 7, 2-5 %% larger on the held-out "
                        "photos (BD-rate) and up to a quarter larger on smooth ones")
    p.add_argument("--no-post-filter", dest="post_filter", action="store_false",
                   help="do not fit and store the per-image post-filter (format version 8; README: Codec quality): "
                        "compress about twice as fast, files readable by aekit before version 8, about 10 %% more "
                        "bytes for the same PSNR on the held-out photos")
    p.add_argument("--int8", action="store_true",
                   help="encode with the model's int8 encoder where it ships one (the photo models: 1.6-1.9x "
                        "faster compress; other symbols than fp32, slightly different files; `aekit info MODEL`)")
    common(p)
    add_engine_args(p)  # --engine ray: the same job as a Ray Data pipeline (aekit.codec.ray_jobs)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode .ael latent files (file or folder tree) back to images",
                       formatter_class=FMT, description="Decode .ael files back to images; each file's model "
                       f"is found by the id it stores, in -m if given, else in ${MODELS_ENV} and ./models. {EXIT_DOC}")
    p.add_argument("src", help=f"{SUFFIX} file or folder")
    p.add_argument("-o", "--out", required=True, help="output folder (mirrors SRC) or a single image file")
    p.add_argument("-m", "--models", action="append", type=model_arg,
                   help=f"model folder or folder of model folders (repeatable; default: ${MODELS_ENV}, ./models; "
                        "the shipped models are always searched last)")
    p.add_argument("--format", dest="out_format", choices=("png", "same"), default=j.out_format,
                   help="png: lossless PNG; same: the original file's suffix (JPEG q95, lossless WebP)")
    p.add_argument("--int8", action="store_true",
                   help="decode with the model's int8 decoder where it ships one (the photo models: 1.9-2.2x faster "
                        "decompress on CPU for 0.2-0.3 dB; `aekit info MODEL`); models without one decode in fp32")
    common(p)
    add_engine_args(p)  # --engine ray: the same job as a Ray Data pipeline (aekit.codec.ray_jobs)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("evaluate", help="rate-distortion of models on a folder vs JPEG and WebP",
                       formatter_class=FMT, description="Mean bytes, bpp, PSNR and MS-SSIM of each model (and "
                       "latent levels) against JPEG and WebP swept over quality, interpolated at equal mean "
                       "bytes; writes results.json, results.md and rd.png.")
    p.add_argument("src", help="image folder")
    p.add_argument("-m", "--model", action="append", required=True, type=model_arg,
                   help="model folder or shipped model's name (repeatable)")
    p.add_argument("-o", "--out", default="eval", help="output folder: results.json, results.md, rd.png")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--tile", type=int, default=0,
                   help="also code every image in tiles of this side and report the seam cost (0: off)")
    p.add_argument("--levels", type=int, nargs="+", default=[0],
                   help="tanh-latent models: evaluate at these latent levels (0: the model's): an RD curve per model")
    p.add_argument("--quality", type=int, nargs="+", default=[], dest="model_qualities",
                   help="rate-distortion models: evaluate these qualities (default: every quality the model offers)")
    p.add_argument("--name", default="", help="data set name for the table and plot")
    p.add_argument("--int8", action="store_true",
                   help="code with the models' int8 encoder/decoder variants where they ship them (aekit add-int8)")
    p.add_argument("--rdoq", type=float, default=c.rdoq,
                   help="rate-distortion models: compress's --rdoq (0: plain rounding)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default=c.device,
                   help=f"onnxruntime provider (default {c.device}: CUDA when onnxruntime-gpu sees a GPU, else CPU)")
    p.set_defaults(func=cmd_evaluate)


def job_configs(args: argparse.Namespace):
    from aekit.codec.core import CodecConfig
    from aekit.codec.jobs import JobConfig

    ccfg = CodecConfig(batch_size=args.batch_size, full_res_max_pixels=args.full_res_max_pixels,
                       tile_px=args.tile, device=args.device,
                       threads=CodecConfig.threads if args.threads is None else args.threads,
                       max_pixels=args.max_pixels, levels=getattr(args, "levels", 0),
                       quality=getattr(args, "quality", 0), workers=args.workers, memory_mb=args.memory_mb,
                       smallest=args.smallest, int8=getattr(args, "int8", False),
                       rdoq=getattr(args, "rdoq", CodecConfig.rdoq),
                       channel_context=getattr(args, "channel_context", True),
                       spatial_context=getattr(args, "spatial_context", True),
                       post_filter=getattr(args, "post_filter", True))
    jcfg = JobConfig(overwrite=args.overwrite, workers=args.workers, progress=args.progress,
                     out_format=getattr(args, "out_format", "png"), held_mb=args.held_mb, smallest=args.smallest)
    return ccfg, jcfg


def _finish(report) -> int:
    """The summary (info: `aekit -q` drops it) and the report's warnings (kept by -q) on stderr; the exit code."""
    import logging

    log = logging.getLogger("aekit.codec")
    log.info("%s", report.summary())
    for line in report.warnings():
        log.warning("warning: %s", line)
    return EXIT_ERROR if report.failed else EXIT_OK


def cmd_compress(args: argparse.Namespace) -> int:
    from aekit.codec.core import Codec
    from aekit.codec.jobs import compress_tree

    ccfg, jcfg = job_configs(args)
    if args.engine == "ray":
        from aekit.codec.ray_jobs import compress_tree_ray

        return _finish(compress_tree_ray(args.src, args.out, args.model, ccfg, _ray_config(args, ccfg)))
    import logging

    codec = Codec(args.model, ccfg)
    if ccfg.int8 and not codec.rt.encoder_int8:
        logging.getLogger("aekit.codec").warning("note: model %s ships no int8 encoder (`aekit add-int8 MODEL "
                                                 "--encoder`); --int8 compresses with its fp32 encoder", codec.model_id)
    return _finish(compress_tree(args.src, args.out, codec, jcfg))


def cmd_decompress(args: argparse.Namespace) -> int:
    from aekit.codec.core import Decoder
    from aekit.codec.jobs import decompress_tree

    ccfg, jcfg = job_configs(args)
    for m in args.models or []:  # a search path that is not there would only make "model not found" later
        if "://" not in str(m) and not Path(m).exists():
            raise ValueError(f"-m {m}: no such model or folder (decompress finds each file's model by its id "
                             "in these folders and the shipped models)")
    if args.engine == "ray":
        from aekit.codec.ray_jobs import decompress_tree_ray

        return _finish(decompress_tree_ray(args.src, args.out, args.models, ccfg, _ray_config(args, ccfg),
                                           jcfg.out_format))
    return _finish(decompress_tree(args.src, args.out, Decoder(args.models, ccfg, named=True), jcfg))


def _ray_config(args: argparse.Namespace, ccfg):
    """Ray options; each actor's onnxruntime uses its reserved CPUs unless --threads says otherwise."""
    from aekit.export.engine_ray import ray_config

    if args.threads is None:
        ccfg.threads = max(1, round(args.actor_cpus))
    if not args.workers:  # actors are the parallelism: one model call at a time in each
        ccfg.workers = 1
    return ray_config(args, ccfg.batch_size, args.overwrite)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aekit.codec.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(src=args.src, models=args.model, out=args.out, limit=args.limit, tile_px=args.tile,
                     levels=args.levels, model_qualities=args.model_qualities,
                     name=args.name or os.path.basename(os.path.normpath(args.src)), device=args.device,
                     int8=args.int8, rdoq=args.rdoq)
    result = evaluate(cfg)
    print(result["markdown"])
    print(f"wrote {args.out}/results.json, results.md, rd.png")
    return EXIT_OK
