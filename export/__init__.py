"""export: trained checkpoints -> ONNX encoder/decoder + manifest, and the ONNX runtime.

`aekit.export.onnx` needs torch (export time); `aekit.export.manifest` and `aekit.export.runtime` need only
numpy + onnxruntime, and are what codec, detector and bench run on.
"""
