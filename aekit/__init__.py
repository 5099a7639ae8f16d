"""aekit: convolutional autoencoders trained in PyTorch and shipped as ONNX.

The core package: model configs and architectures, losses, data, training and the
`aekit` command root. Importing `aekit` itself loads neither torch nor onnxruntime.
"""

__version__ = "0.1.0"
