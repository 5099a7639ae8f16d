"""`aekit denoise`: run images through an exported model (encode, quantise, decode) into a
mirrored folder of reconstructions. With a model trained with `--noise` this removes noise;
with any model it shows what the codec keeps.

    aekit denoise noisy/ -m models/fmnist-denoise -o clean/
Same streaming, batching, atomic writes, per-file errors and resume as `aekit decompress`.
"""

from __future__ import annotations

import logging
import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from aekit.images import is_image_name
from aekit.codec.core import Codec, Decoder
from aekit.codec.jobs import (
    Item, JobConfig, JobReport, Pipeline, decoded_name, encode_image_file, plan, progress, recipe, start_job,
)

log = logging.getLogger(__name__)


def reconstruct_tree(src: str | Path, dst: str | Path, model_dir: str | Path, codec: Codec,
                     jcfg: JobConfig | None = None) -> JobReport:
    """Reconstruct an image file or folder tree into mirrored images (PNG unless out_format='same')."""
    jcfg, report, t0 = jcfg or JobConfig(), JobReport("reconstructed"), time.monotonic()
    decoder = Decoder([model_dir], codec.cfg)
    total, items = plan(Path(src), Path(dst), is_image_name, lambda rel: decoded_name(rel, jcfg.out_format), report)
    ledger = start_job(Path(src), Path(dst), recipe("denoise", codec, out_format=jcfg.out_format))

    def route(item: Item) -> None:
        arr, mode = item.data  # (H, W, C) uint8, original mode
        if codec.tiled(*arr.shape[:2]):
            flush([item])  # a large image is its own batch, coded in tiles
        else:
            p.add(("img", mode) + arr.shape, item, arr.size, codec.cfg.batch_size, flush)

    def flush(items: list[Item]) -> None:
        images = np.stack([it.data[0] for it in items])  # (B, H, W, C)
        q = codec.symbols(images)  # (B, c_y, h, w): exactly what a .ael file would hold
        header = codec.header(images.shape[1], images.shape[2], items[0].data[1], coder=0)
        for it, img in zip(items, decoder.reconstruct(header, q)):
            it.data = None
            p.write(it, lambda a=img, d=it.dst: encode_image_file(a, d), img.size)

    with progress(total, jcfg.progress, "img") as bar:
        p = Pipeline(report, jcfg, bar, ledger)
        p.run(items, lambda it: codec.load(it.src), route, flush)
    report.seconds = time.monotonic() - t0
    return report


def register(sub: argparse._SubParsersAction) -> None:
    from aekit.export.manifest import model_arg
    from aekit.codec.cli import common

    j = JobConfig()
    p = sub.add_parser("denoise", help="reconstruct images through a model (denoising with a --noise model)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Encode, quantise and decode each image of SRC with an exported model and "
                       "write the reconstructions to a mirrored tree. Exit codes: 0 all done (or skipped as "
                       "existing); 2 usage error or any file failed; 130 interrupted.")
    p.add_argument("src", help="image file or folder (searched recursively)")
    p.add_argument("-m", "--model", required=True, type=model_arg,
                   help="exported model folder or shipped model's name (ideally trained with --noise)")
    p.add_argument("-o", "--out", required=True, help="output folder (mirrors SRC) or a single image file")
    p.add_argument("--format", dest="out_format", choices=("png", "same"), default=j.out_format,
                   help="png: lossless PNG; same: the original file's suffix")
    common(p)
    p.set_defaults(func=cmd_denoise)


def cmd_denoise(args: argparse.Namespace) -> int:
    from aekit.codec.cli import job_configs

    ccfg, jcfg = job_configs(args)
    codec = Codec(args.model, ccfg)
    noise = (codec.rt.manifest.get("training") or {}).get("noise")
    if not noise:
        warnings.warn(f"{args.model} was not trained with --noise; its reconstructions are not denoised",
                      stacklevel=1)
    report = reconstruct_tree(args.src, args.out, args.model, codec, jcfg)
    log.info("%s", report.summary())
    return 2 if report.failed else 0
