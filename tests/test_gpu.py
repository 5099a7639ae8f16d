"""CUDA paths, marked `gpu`: skipped where no GPU is visible, run wherever one is.

The codec on onnxruntime's CUDA provider (files decodable on the CPU, reconstructions close to
the CPU's), training on CUDA with mixed precision, and the bench's CUDA backends and nvJPEG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aekit.cli import main
from aekit.metrics import psnr

pytestmark = pytest.mark.gpu


def ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_codec_on_cuda_files_decode_on_cpu(tiny_model, gray_dir):
    from aekit.codec.core import Codec, CodecConfig, Decoder

    if not ort_cuda():
        pytest.skip("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
    from aekit.images import load_image

    model = tiny_model(1, 4)
    images = [load_image(p, 1)[0] for p in sorted((gray_dir / "test").rglob("*.png"))[:16]]
    cuda, cpu = Codec(model, CodecConfig(device="cuda")), Codec(model, CodecConfig(device="cpu"))
    assert "CUDAExecutionProvider" in cuda.rt.encoder.get_providers()
    dec_cpu = Decoder([model], CodecConfig(device="cpu"))
    dec_cuda = Decoder([model], CodecConfig(device="cuda"))
    for im in images:
        data = cuda.compress(im)
        on_cpu, _ = dec_cpu.decompress(data)  # a file written on the GPU decodes on the CPU
        on_gpu, _ = dec_cuda.decompress(data)
        assert psnr(on_cpu, on_gpu) > 40  # same symbols; only the decoder's float maths differs
        ref, _ = dec_cpu.decompress(cpu.compress(im))
        assert psnr(ref, on_cpu) > 30  # rare symbol flips from the encoder's float maths at most


def test_training_on_cuda_with_amp(gray_dir, tmp_path):
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.train import TrainConfig, train

    tcfg = TrainConfig(data=str(gray_dir / "train"), out=str(tmp_path / "run"), epochs=2, batch_size=32, lr=3e-3,
                       device="cuda", data_cfg=DataConfig(resize="none", workers=2))
    summary = train(tcfg, ModelConfig(channels=1, ratio=4, width=8))
    assert summary["epochs"] == 2 and 10 < summary["best_val_psnr"] < 60


@pytest.mark.parametrize("channels", [1, 3])
def test_bench_cuda_backends_and_nvjpeg(tiny_model, tmp_path, capsys, channels):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(tiny_model(channels, 4)), "--batch", "1,4", "--seconds", "0.05", "--warmup", "1",
               "--max-images", "4", "--device", "cuda", "--backend", "ort,torch-eager", "--json", str(out)])
    err = capsys.readouterr().err
    rows = json.loads(out.read_text())["results"]
    ok = {r["backend"] for r in rows if r["status"] == "ok"}
    assert "torch-eager" in ok, (ok, err)
    nvjpeg = {r["status"] for r in rows if r["backend"] == "jpeg-nvjpeg"}
    assert nvjpeg == ({"ok"} if channels == 3 else {"skipped"}), (nvjpeg, err)  # GPU JPEG encodes RGB only
    if ort_cuda():
        assert rc == 0 and "ort-cuda" in ok, (ok, err)
