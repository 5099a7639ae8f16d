"""export: trained checkpoints -> ONNX encoder/decoder + manifest, and the ONNX runtime.

`export.onnx` needs torch (export time); `export.manifest` and `export.runtime` need only
numpy + onnxruntime, and are what codec, detector and bench run on.
"""
