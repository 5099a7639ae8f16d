"""Convolutional autoencoders: the base, the registry and every architecture, by layer.

    base.py     Autoencoder (pad, encode, quantise, decode, crop), AEOutput, LatentPrior, the registry
    blocks.py   DCGAN conv units, residual blocks, the DCGAN decoder, the pretrained ResNet trunk
    convae.py   tanh-latent architectures: dcgan, resnet, pretrained, vae
    rd.py       rate–distortion models: gdn, klt (on aekit.layers and aekit.entropy_models)
Tensors are named after the maths of learned compression: x (image in [-1, 1]), y (latent),
y_hat (quantised latent), x_hat (reconstruction).
    model = build_model(ModelConfig(channels=3, ratio=4)); out = model(x)
"""

from aekit.models.base import ARCHITECTURES, AEOutput, Autoencoder, LatentPrior, build_model, register_arch
from aekit.models.blocks import ResBlock, ResNetTrunk, conv_block, dcgan_decoder, down_conv, up_conv
from aekit.models.convae import ConvVAE, DCGANAutoencoder, PretrainedEncoderAutoencoder, ResNetAutoencoder
from aekit.models.rd import GDNAutoencoder, HyperpriorAutoencoder, KLTAutoencoder, RDAutoencoder

__all__ = [
    "ARCHITECTURES", "AEOutput", "Autoencoder", "ConvVAE", "DCGANAutoencoder", "GDNAutoencoder", "KLTAutoencoder",
    "HyperpriorAutoencoder", "LatentPrior", "PretrainedEncoderAutoencoder", "RDAutoencoder", "ResBlock", "ResNetAutoencoder", "ResNetTrunk",
    "build_model", "conv_block", "dcgan_decoder", "down_conv", "register_arch", "up_conv",
]
