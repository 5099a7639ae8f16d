"""JPEG baselines on the same images: Pillow (CPU, a thread per core) and nvJPEG (GPU, batched).

    q = match_quality(images, target_bytes)      # the quality whose files are closest in size
    pil = PillowJpeg(q, threads=2); blobs = pil.encode(images); back = pil.decode(blobs)
nvJPEG goes through torchvision.io.encode_jpeg / decode_jpeg on CUDA tensors.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aekit.codec import baseline
from aekit.metrics import psnr


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    """One uint8 (H, W, C) image as a whole JPEG file: the codec's baseline (aekit.codec.baseline)."""
    return baseline.encode(img, "JPEG", quality)


def jpeg_decode(blob: bytes, channels: int) -> np.ndarray:
    return baseline.decode(blob, channels)


def match_quality(images: list[np.ndarray], target_bytes: float) -> dict[str, Any]:
    """Pillow quality 1..100 whose mean file size is closest to target_bytes (bisection: size rises with q).

    Returns quality, mean bytes and PSNR; 'note' says when even quality 1 is larger
    (JPEG's own headers and tables cost ~150-600 bytes, more than a tiny latent file).
    """
    def mean_size(q: int) -> float:
        return float(np.mean([len(jpeg_bytes(im, q)) for im in images]))

    lo, hi = 1, 100
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mean_size(mid) < target_bytes:
            lo = mid
        else:
            hi = mid
    q = min((lo, hi), key=lambda k: abs(mean_size(k) - target_bytes))
    size = mean_size(q)
    out = {"quality": q, "mean_bytes": size, "target_bytes": target_bytes,
           "psnr_db": float(np.mean([psnr(im, jpeg_decode(jpeg_bytes(im, q), im.shape[2])) for im in images]))}
    if q == 100 and size < target_bytes / 1.2:
        out["note"] = (f"JPEG at quality 100 takes {size:.0f} bytes, less than the {target_bytes:.0f} compared with")
    if q == 1 and size > 1.2 * target_bytes:
        out["note"] = (f"JPEG cannot get as small as {target_bytes:.0f} bytes here: quality 1 still takes "
                       f"{size:.0f} bytes (headers and tables)")
    return out


class PillowJpeg:
    """Pillow (libjpeg-turbo) over a thread pool; Pillow releases the GIL while coding."""

    name = "jpeg-pillow"
    device = "cpu"

    def __init__(self, quality: int, threads: int = 1):
        self.quality, self.threads = quality, max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _map(self, fn: Any, items: Any) -> list[Any]:
        return list(self.pool.map(fn, items)) if self.pool else [fn(i) for i in items]

    def encode(self, images: np.ndarray | list[np.ndarray]) -> list[bytes]:
        return self._map(lambda im: jpeg_bytes(im, self.quality), list(images))

    def decode(self, blobs: list[bytes], channels: int) -> np.ndarray:
        return np.stack(self._map(lambda b: jpeg_decode(b, channels), blobs))

    def sync(self) -> None:
        pass

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


class NvJpeg:
    """nvJPEG through torchvision, batched: device pixels -> device bitstreams, host bitstreams -> device pixels."""

    name = "jpeg-nvjpeg"
    device = "cuda"

    def __init__(self, quality: int):
        from aekit.bench.backends import BackendError
        from aekit.bench.devices import cuda_status

        try:
            import torch
            import torchvision.io as tvio
        except ImportError:
            raise BackendError("jpeg-nvjpeg: needs torch and torchvision (pip install 'aekit[train]')") from None
        if not torch.cuda.is_available():
            raise BackendError(f"jpeg-nvjpeg: {cuda_status() or 'torch.cuda is not available'}")
        self.torch, self.tvio, self.quality = torch, tvio, quality

    def load(self, images: np.ndarray) -> None:
        """Stage the batch on the GPU as CHW uint8 tensors (nvJPEG's layout)."""
        t = self.torch
        dev = t.from_numpy(np.ascontiguousarray(images)).cuda().permute(0, 3, 1, 2)
        self.chw = [im.contiguous() for im in dev]
        self.blobs_dev = self.tvio.encode_jpeg(self.chw, quality=self.quality)
        self.blobs_host = [b.cpu() for b in self.blobs_dev]

    def encode_staged(self) -> None:
        self.blobs_dev = self.tvio.encode_jpeg(self.chw, quality=self.quality)

    def decode_staged(self) -> None:
        mode = self.tvio.ImageReadMode.GRAY if self.chw[0].shape[0] == 1 else self.tvio.ImageReadMode.RGB
        self.out = self.tvio.decode_jpeg(self.blobs_host, mode=mode, device="cuda")

    def encoded_sizes(self) -> list[int]:
        return [int(b.numel()) for b in self.blobs_dev]

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def close(self) -> None:
        self.torch.cuda.empty_cache()
