"""Settings of `aekit serve`: one dataclass, every default commented (the CLI shows them too)."""

from __future__ import annotations

from dataclasses import dataclass, field

MB = 1 << 20


@dataclass
class ServeConfig:
    model: str = ""  # exported model folder (manifest.json + encoder/decoder ONNX)
    host: str = "127.0.0.1"  # loopback only unless the operator says otherwise
    port: int = 8000  # TCP port
    workdir: str | None = None  # the server's own folder (temp uploads, learned versions); None: a fresh temp dir
    max_upload_bytes: int = 10 * MB  # larger request bodies get 413 before they are parsed
    max_pixels: int = 1 << 22  # images (and latent files declaring images) above 4 Mpx get 413 before any
    # decoding: uploads are untrusted, so far below the command line's 179 Mpx
    tile_above_pixels: int = 1 << 18  # larger images are coded in 512 x 512 tiles (bounded memory per request)
    max_concurrent: int = 2  # heavy requests (decode, encode, screen, learn) computing at once; others wait
    max_waiting: int = 64  # requests waiting for a slot; one more answers 503 at once (bounded memory)
    request_timeout_s: float = 30.0  # a request still computing after this answers 503
    device: str = "auto"  # onnxruntime device: auto | cuda | cpu
    threads: int = 1  # onnxruntime intra-op threads per session (1: many requests in parallel)
    alpha: float | None = None  # screening false-positive rate (None: the calibration's own)
    calibration: str | None = None  # normal images (class subfolders or flat) to calibrate every model version
    calibration_limit: int = 200  # at most this many calibration images per class
    cors_origins: list[str] = field(default_factory=list)  # CORS is off unless origins are named
    keep_uploads: str | None = None  # keep accepted uploads in this folder (off: uploads never stay on disk)
    # online learning (--learn)
    learn: bool = False  # train a PyTorch copy on the images the operator posts to /v1/learn, swap in versions
    learn_token: str | None = None  # if set, /v1/learn needs this value in the X-Learn-Token header
    checkpoint: str | None = None  # the model's best.pt (default: the checkpoint named by its manifest)
    queue_size: int = 256  # training queue; uploads beyond it are dropped (counted), requests never wait
    batch_size: int = 16  # images per training step (fewer when fewer are waiting)
    lr: float = 1e-4  # Adam learning rate of online updates
    crop: int = 128  # uploads larger than this are randomly cropped to crop x crop for training
    swap_every_s: float = 60.0  # export and swap a new version at most this often ...
    swap_min_steps: int = 20  # ... and only after this many training steps since the last one
    keep_versions: int = 5  # learned versions kept loadable for decompress (older ones: 409)
    seed: int = 0  # seeds training crops and shuffling
