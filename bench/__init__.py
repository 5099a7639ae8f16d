"""Throughput benchmarks: `aekit bench MODEL` times encode, entropy coding and decode
of an exported model on onnxruntime (CPU/CUDA/TensorRT) and PyTorch (eager/compiled)
against JPEG (Pillow, nvJPEG) on the same images; see bench/RESULTS.md.
"""
