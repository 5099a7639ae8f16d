"""The timed stages of one setting (backend x precision x size x batch): rows of StageResult.

    codec, decoder = open_codec(model_dir, threads)             # aekit.bench.quality
    st = Stages(cfg, HostPeakMemory(), codec, decoder, peak); st.set_images(images, y)
    rows = st.entropy("28x28", 8, 28, 28) + st.model(runner, "ort-cpu", "fp32", imgs, y_hat, "28x28", 8, 28, 28, flops)
Stages time and measure; they neither log nor decide what runs next (the sweep, run.py, does).
Whatever turns latents into bytes and back is the codec's own API (aekit.codec.core): the
model's quantiser with RDOQ (`Codec.quantise`), `Codec.pack` (entropy code + header: the .ael file
`aekit compress` writes) and `Decoder.symbols` (parse + entropy decode), so bytes per image are whole
files and the symbols are those the codec codes. Without a codec (--no-entropy, or no entropy coder
installed) only the network and JPEG stages run. Content-dependent stages (entropy coding,
JPEG, end to end) walk through the distinct images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from aekit.bench.backends import Runner
from aekit.bench.inputs import Cycle
from aekit.bench.schema import BenchConfig, StageResult, fill
from aekit.bench.timing import timed

if TYPE_CHECKING:
    from aekit.codec.core import Codec, Decoder


class Stages:
    """What the stages of a run share: settings, memory meter, the model's codec and decoder (None:
    no entropy stages), device peak, and the distinct images of the current size with their
    latents and .ael files."""

    def __init__(self, cfg: BenchConfig, mem: Any, codec: Codec | None, decoder: Decoder | None,
                 peak: dict[str, float | None]):
        self.cfg, self.mem, self.codec, self.decoder, self.peak = cfg, mem, codec, decoder, peak
        self.images, self.y, self.files = np.zeros(0), np.zeros(0), []
        self.mode = ""

    def set_images(self, images: np.ndarray, y: np.ndarray) -> None:
        """images uint8 (N, H, W, C); y float32 (N, c_y, h, w), the encoder's latents of them."""
        self.images, self.y = images, y
        if self.codec is not None:
            self.mode = "L" if images.shape[3] == 1 else "RGB"
            # with RDOQ and the post-filter, as compress writes them
            self.files = [self.pack(q, im) for q, im in zip(self.codec.quantise(y), images)]

    def pack(self, q: np.ndarray, image: np.ndarray | None = None) -> bytes:
        """Symbols (c_y, h, w) of one image of the current size -> its .ael file (Codec.pack; with its pixels, the
        post-filter is fitted as compress fits it; without, the entropy coder alone)."""
        h, w = self.images.shape[1:3]
        return self.codec.pack(q, h, w, self.mode, image)

    def symbols(self, indexes: np.ndarray) -> np.ndarray:
        """The files at indexes -> their symbols (B, c_y, h, w), as `aekit decompress` reads them."""
        return np.stack([self.decoder.symbols(self.files[i])[1] for i in indexes])

    def _timed(self, fn: Any, sync: Any) -> Any:
        return timed(fn, sync, self.cfg.seconds, self.cfg.warmup)

    def coded_bytes(self) -> float:
        """Mean size of the current images' whole .ael files."""
        return float(np.mean([len(f) for f in self.files]))

    def entropy(self, size: str, b: int, h: int, w: int) -> list[StageResult]:
        """Quantise + entropy code into files, and files -> symbols -> dequantise, b images per call (CPU)."""
        quantiser, y = self.codec.quantiser, self.y
        nbytes = self.coded_bytes()
        enc_cycle, dec_cycle = Cycle(len(y), b), Cycle(len(y), b)

        def encode() -> None:
            for i in enc_cycle.next():
                self.pack(self.codec.quantise(y[i][None])[0])

        def decode() -> None:
            quantiser.dequantise(self.symbols(dec_cycle.next()))

        rows = []
        for stage, fn in (("entropy-encode", encode), ("entropy-decode", decode)):
            self.mem.reset()
            r = fill(StageResult("entropy", "-", size, b, stage), self._timed(fn, lambda: None), b, h, w)
            r.bytes_per_image, r.peak_host_bytes = nbytes, self.mem.peak_bytes()
            rows.append(r)
        return rows

    def model(self, r: Runner, name: str, prec: str, imgs: np.ndarray, y_hat: np.ndarray, size: str, b: int,
              h: int, w: int, flops: dict[str, int]) -> list[StageResult]:
        """Network encode and decode on device-resident tensors, then (with an entropy model) the
        in-memory compress and decompress end to end; raises what the runner raises."""
        if getattr(r, "shape", None) not in (None, imgs.shape):
            r.close()  # free the previous shape's sessions before measuring this one's memory
        self.mem.reset()
        r.load(imgs, y_hat)
        r.reset_peak_memory()
        rows = []
        for stage, fn, fl in (("encode", r.encode, flops["encoder"]), ("decode", r.decode, flops["decoder"])):
            row = fill(StageResult(name, prec, size, b, stage), self._timed(fn, r.sync), b, h, w)
            if fl:
                row.gflop_per_image = fl / 1e9
                row.achieved_tflops = fl * row.images_per_s / 1e12
                peak = self.peak.get(prec)
                row.peak_fraction = row.achieved_tflops / peak if peak else None
            rows.append(row)
        dev_peak = r.peak_memory()
        if self.codec is not None:
            rows += self.end_to_end(r, name, prec, size, b, h, w)
        host_peak = self.mem.peak_bytes()
        for row in rows:
            row.peak_host_bytes, row.peak_device_bytes = host_peak, dev_peak
        return rows

    def end_to_end(self, r: Runner, name: str, prec: str, size: str, b: int, h: int, w: int) -> list[StageResult]:
        """In-memory pixels -> bytes and bytes -> pixels, host to host, entropy coder included;
        each call takes the next b distinct images (the gather is part of the work timed). The
        network is the runner's; quantising and coding are the codec's."""
        quantiser, images = self.codec.quantiser, self.images
        enc_cycle, dec_cycle = Cycle(len(images), b), Cycle(len(images), b)

        def compress() -> None:
            for q in self.codec.quantise(r.compress(images[enc_cycle.next()])):
                self.pack(q)

        def decompress() -> None:
            r.decompress(quantiser.dequantise(self.symbols(dec_cycle.next())))

        out = []
        nbytes = self.coded_bytes()
        for stage, fn in (("compress", compress), ("decompress", decompress)):
            row = fill(StageResult(name, prec, size, b, stage), self._timed(fn, r.sync), b, h, w)
            row.bytes_per_image = nbytes
            out.append(row)
        return out

    def jpeg_pillow(self, size: str, b: int, h: int, w: int, quality: int, threads: int) -> list[StageResult]:
        """Pillow JPEG encode and decode of b distinct images per call, on `threads` threads."""
        from aekit.bench.jpeg import PillowJpeg

        images, ch = self.images, self.images.shape[3]
        pil = PillowJpeg(quality, threads=threads)
        blobs = pil.encode(list(images))
        nbytes = float(np.mean([len(x) for x in blobs]))
        enc_cycle, dec_cycle = Cycle(len(images), b), Cycle(len(images), b)
        rows = []
        for stage, fn in (("jpeg-encode", lambda: pil.encode([images[i] for i in enc_cycle.next()])),
                          ("jpeg-decode", lambda: pil.decode([blobs[i] for i in dec_cycle.next()], ch))):
            self.mem.reset()
            row = fill(StageResult("jpeg-pillow", f"q{quality}", size, b, stage), self._timed(fn, pil.sync), b, h, w)
            row.bytes_per_image, row.peak_host_bytes = nbytes, self.mem.peak_bytes()
            rows.append(row)
        pil.close()
        return rows

    def jpeg_nvjpeg(self, nv: Any, imgs: np.ndarray, size: str, b: int, h: int, w: int,
                    quality: int) -> list[StageResult]:
        """nvJPEG (an aekit.bench.jpeg.NvJpeg) encode and decode of the batch staged on the GPU;
        raises what nvJPEG raises."""
        nv.load(imgs)
        nbytes = float(np.mean(nv.encoded_sizes()))
        rows = []
        for stage, fn in (("jpeg-encode", nv.encode_staged), ("jpeg-decode", nv.decode_staged)):
            row = fill(StageResult("jpeg-nvjpeg", f"q{quality}", size, b, stage), self._timed(fn, nv.sync), b, h, w)
            row.bytes_per_image = nbytes
            rows.append(row)
        return rows
