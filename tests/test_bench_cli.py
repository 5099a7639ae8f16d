"""`aekit bench` end to end on tiny models (CPU), and every bad input the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aekit.cli import main
from aekit.export.runtime import gpu_visible

FAST = ["--seconds", "0.02", "--warmup", "1", "--max-images", "4", "--device", "cpu"]
MODEL_STAGES = {"encode", "decode", "compress", "decompress"}


def bench(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["bench", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_default_size_fits_a_model_whose_factor_does_not_divide_the_images(tiny_model, tmp_path, capsys):
    """A 1/9 model (factor 6) on 28 x 28 images: the default size is rounded down to 24 x 24, so the bench
    measures something instead of skipping its only size (exit 2)."""
    out = tmp_path / "b.json"
    rc, _, err = bench(capsys, tiny_model(1, 9), "--batch", "1", *FAST, "--json", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert {r["size"] for r in rep["results"] if r["status"] == "ok"} == {"24x24"}


def test_end_to_end_json_table_and_plot(tiny_model, tmp_path, capsys):
    out = tmp_path / "r" / "bench.json"
    rc, stdout, _ = bench(capsys, tiny_model(1, 4), "--batch", "1,3", *FAST, "--json", out)
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["format"] == "aekit-bench" and rep["format_version"] == 1
    env = rep["environment"]
    assert env["device_name"] and env["libraries"]["onnxruntime-gpu"] or env["libraries"]["onnxruntime"]
    assert rep["config"]["batches"] == [1, 3] and rep["config"]["resolved_backends"] == ["ort-cpu"]
    assert rep["peak"]["tflops"]["fp32"] > 0
    size = "28x28"  # the images' own size is the default
    assert rep["model"]["flops"][size]["encoder"] > 0
    ok = [r for r in rep["results"] if r["status"] == "ok"]
    stages = {(r["backend"], r["stage"], r["batch"]) for r in ok}
    for b in (1, 3):
        for st in MODEL_STAGES:
            assert ("ort-cpu", st, b) in stages
        assert ("entropy", "entropy-encode", b) in stages and ("entropy", "entropy-decode", b) in stages
        assert ("jpeg-pillow", "jpeg-encode", b) in stages and ("jpeg-pillow", "jpeg-decode", b) in stages
    for r in ok:
        assert r["size"] == size and r["images_per_s"] > 0 and r["megapixels_per_s"] > 0
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert r["timing"]["n"] >= 3
        if r["stage"] in ("encode", "decode"):
            assert r["achieved_tflops"] > 0 and r["peak_fraction"] > 0 and r["peak_host_bytes"] > 0
    q = rep["quality"][0]
    assert q["ours_bytes"] > 0 and 1 <= q["jpeg_quality"] <= 100 and q["ours_psnr_db"] > 10
    # every stage that codes latents writes the codec's whole .ael files: the quality row's bytes per image
    for b in (1, 3):
        coded = {r["bytes_per_image"] for r in ok if r["batch"] == b and r["stage"] in
                 ("entropy-encode", "entropy-decode", "compress", "decompress")}
        assert len(coded) == 1 and coded.pop() == pytest.approx(q["ours_bytes"], rel=0.02)
    assert 20 < q["ours_bytes"] <= 4 * 7 * 7 + 64  # entropy-coded, at most the raw symbols and a header
    assert rep["ratios"] and all(x["ratio"] > 0 for x in rep["ratios"])
    assert "| ort-cpu | fp32 | 28x28 | 3 | encode |" in stdout and "ours/JPEG" in stdout
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rgb_sizes_and_bad_size_continue(tiny_model, capsys):
    """A size that is not a multiple of the factor gets one line; the other sizes still run."""
    rc, stdout, err = bench(capsys, tiny_model(3, 4), "--size", "30x30,32x32", "--batch", "2", "--no-jpeg", *FAST)
    assert rc == 2
    assert "size 30x30: not a multiple of the model's down-sampling factor 4" in err
    assert "| ort-cpu | fp32 | 32x32 | 2 | encode |" in stdout


@pytest.mark.skipif(gpu_visible(), reason="a GPU is present: --device cuda would work")
def test_cuda_without_gpu_says_so_and_cpu_baselines_still_run(tiny_model, capsys):
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--batch", "1,2", "--seconds", "0.02", "--max-images", "2",
                            "--device", "cuda", "--backend", "ort,torch")
    assert rc == 2
    lines = [ln for ln in err.splitlines() if "no CUDA GPU visible" in ln or "torch.cuda is not available" in ln]
    names = [ln.split(":")[0] for ln in lines]
    assert "ort-cuda" in names and "torch-eager" in names and "jpeg-nvjpeg" in names
    assert len(names) == len(set(names))  # one line per backend, not one per setting
    assert "| jpeg-pillow |" in stdout and "| entropy |" in stdout  # the rest of the sweep went on


def test_missing_provider(tiny_model, capsys, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--backend", "ort-trt,ort-cpu", "--batch", "1", "--no-jpeg", *FAST)
    assert rc == 2
    assert "ort-trt: TensorrtExecutionProvider missing from this onnxruntime" in err
    assert "| ort-cpu | fp32 | 28x28 | 1 | encode |" in stdout


def test_oom_at_a_batch_size_is_reported_and_larger_batches_skipped(tiny_model, capsys, monkeypatch):
    from aekit.bench.backends_ort import OrtRunner

    real = OrtRunner.encode

    def encode(self) -> None:
        if self.images.shape[0] >= 4:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                               "requested buffer of size 123456789")
        real(self)

    monkeypatch.setattr(OrtRunner, "encode", encode)
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--batch", "1,4,8", "--no-jpeg", *FAST)
    assert rc == 0  # running out of memory at a batch size is a result, not a failure
    assert "ort-cpu fp32 28x28: out of memory at batch 4" in err
    assert "batch 8 skipped (batch 4 ran out of memory)" in err
    assert "| ort-cpu | fp32 | 28x28 | 1 | encode |" in stdout
    assert "| entropy | - | 28x28 | 8 | entropy-encode |" in stdout  # other stages continue


def test_host_memory_guard_refuses_a_batch_that_cannot_fit(tiny_model, capsys):
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--batch", "1,2", "--no-jpeg", "--no-entropy", *FAST)
    assert rc == 0
    import aekit.bench.run as br
    from aekit.bench.schema import BenchConfig

    cfg = BenchConfig(model=str(tiny_model(1, 4)), device="cpu", batches=(1, 1_000_000), seconds=0.02, warmup=1,
                         max_images=2, jpeg=False, entropy=False)
    rep = br.run_bench(cfg, log=lambda m: None)
    big = [r for r in rep.results if r.batch == 1_000_000]
    assert big and big[0].status == "oom" and "refused as out of memory" in big[0].message


def test_torch_backend_needs_weights(tiny_model, capsys, tmp_path):
    pytest.importorskip("torch")
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--backend", "torch-eager,ort-cpu", "--batch", "1",
                            "--no-jpeg", "--checkpoint", tmp_path / "nope.pt", *FAST)
    assert rc == 2 and "nope.pt" in err and "not found" in err
    assert "| ort-cpu | fp32 |" in stdout


def test_torch_eager_and_precisions_on_cpu(tiny_model, capsys):
    """Weights found through the manifest; fp16 ONNX absent -> one clear line."""
    pytest.importorskip("torch")
    rc, stdout, err = bench(capsys, tiny_model(1, 4), "--backend", "torch-eager,ort-cpu", "--precision", "fp32,bf16",
                            "--batch", "2", "--no-jpeg", *FAST)
    assert "| torch-eager | fp32 | 28x28 | 2 | encode |" in stdout
    assert "| torch-eager | bf16 | 28x28 | 2 | decode |" in stdout
    assert "ort-cpu: bf16 is not offered for onnxruntime" in err and rc == 2


def test_bad_arguments_are_usage_errors(tiny_model, capsys):
    with pytest.raises(SystemExit):
        main(["bench", str(tiny_model(1, 4)), "--batch", "0"])
    rc, _, err = bench(capsys, tiny_model(1, 4), "--backend", "tpu", *FAST)
    assert rc == 2 and "unknown backend 'tpu'" in err
    rc, _, err = bench(capsys, Path("/nonexistent/model"), *FAST)
    assert rc == 2 and "no such model or folder" in err


def test_folder_stage_runs_the_codec_as_subprocesses(tiny_model, gray_dir):
    from aekit.bench.folder import codec_available, folder_stage

    if codec_available() is not None:
        pytest.skip(codec_available())
    lines: list[str] = []
    row = folder_stage(str(tiny_model(1, 4)), str(gray_dir / "test"), 20, lines.append)
    assert row["status"] == "ok", row
    assert row["files"] == row["latent_files"] == row["decoded_files"] == 20
    assert row["compress"]["images_per_s"] > 0 and row["compress"]["peak_rss_bytes"] > 0
    assert 0 < row["latent_bytes"] < row["source_bytes"] * 4


def test_bench_imports_stay_lazy():
    """Importing the bench loads neither torch nor the codec: the heavy parts load when a stage runs."""
    code = ("import sys, aekit.bench.cli, aekit.bench.run, aekit.bench.report, aekit.bench.folder, aekit.bench.jpeg, aekit.bench.backends, "
            "aekit.bench.stages, aekit.bench.quality, aekit.bench.devices, aekit.bench.failures, aekit.bench.summary; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('aekit.codec.core')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_folder_stage_children_ignore_an_aekit_folder_in_the_working_directory(tmp_path, monkeypatch):
    """The folder stage runs `aekit compress/decompress` as child processes: run from a folder holding a
    folder named aekit (a clone of the repository), they still import the installed package."""
    from aekit.bench.folder import codec_available

    (tmp_path / "aekit").mkdir()
    monkeypatch.chdir(tmp_path)
    assert codec_available() is None


def test_a_folder_stage_that_cannot_run_fails_the_bench(tiny_model, tmp_path, capsys, monkeypatch):
    """--folder asked for but `aekit compress` unavailable: the stage is reported skipped and the exit is 2."""
    import aekit.bench.folder as folder

    monkeypatch.setattr(folder, "codec_available", lambda: "`aekit compress` is not available (test)")
    src = tmp_path / "imgs"
    src.mkdir()
    rc, _, err = bench(capsys, tiny_model(1, 4), "--batch", "1", *FAST, "--folder", str(src))
    assert rc == 2 and "not available (test) -- skipped" in err
