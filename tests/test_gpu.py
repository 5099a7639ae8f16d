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


def test_codec_on_cuda_files_decode_on_cpu(tiny_model, gray_dir):
    from aekit.codec.core import Codec, CodecConfig, Decoder
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


def test_bench_cuda_backends_and_nvjpeg(tiny_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(tiny_model(1, 4)), "--batch", "1,4", "--seconds", "0.05", "--warmup", "1",
               "--max-images", "4", "--device", "cuda", "--backend", "ort,torch", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    ok = {r["backend"] for r in json.loads(out.read_text())["results"] if r["status"] == "ok"}
    assert {"ort-cuda", "jpeg-nvjpeg"} <= ok, ok
