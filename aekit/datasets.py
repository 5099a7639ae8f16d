"""Real image data that installs with packages: Fashion-MNIST (Debian) and bundled photos.

    aekit data fashion-mnist data/fmnist        # train/ and test/ class folders of PNGs
    aekit data samples data/photos              # scikit-image + scikit-learn photos
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from aekit.images import atomic_write_bytes, save_image

log = logging.getLogger(__name__)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # label index order of the original dataset
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# scikit-image photos bundled in its wheel (no download), plus scikit-learn's two.
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
    "immunohistochemistry", "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel",
)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a uint8 array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX body has {body.size} bytes, header says {shape}")
    return body.reshape(shape)


def find_idx(source: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(
        f"{source}: {stem}[.gz] not found; install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or pass --source DIR"
    )


def fashion_mnist(out: str | Path, source: str | Path | None = None, limit: int = 0) -> dict[str, int]:
    """Write Fashion-MNIST as out/{train,test}/<class>/<index>.png; existing files are kept.

    limit > 0 keeps the first `limit` images of each split. Returns images per split.
    """
    src = Path(source) if source else next((Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir()), None)
    if src is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; "
            "apt-get install dataset-fashion-mnist, or pass --source DIR with the IDX files"
        )
    counts = {}
    for split, (img_stem, lbl_stem) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(find_idx(src, img_stem)), read_idx(find_idx(src, lbl_stem))
        if len(images) != len(labels):
            raise ValueError(f"{src}: {split} has {len(images)} images but {len(labels)} labels")
        n = min(limit, len(images)) if limit > 0 else len(images)
        for i in range(n):
            path = Path(out) / split / FASHION_MNIST_CLASSES[labels[i]] / f"{i:05d}.png"
            if not path.exists():
                save_image(images[i][:, :, None], path)
        counts[split] = n
        log.info("%s: %d images in %s", split, n, Path(out) / split)
    return counts


def sample_photos(out: str | Path) -> list[Path]:
    """Write the photos bundled with scikit-image and scikit-learn as PNG/JPEG files."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = Path(out)
    written = []
    for name in SKIMAGE_PHOTOS:
        arr = getattr(skimage.data, name)()
        arr = arr[:, :, :3] if arr.ndim == 3 else arr[:, :, None]
        path = out / f"{name}.png"
        if not path.exists():
            save_image(np.ascontiguousarray(arr.astype(np.uint8)), path)
        written.append(path)
    for src in load_sample_images().filenames:  # china.jpg, flower.jpg: copied byte for byte
        path = out / Path(src).name
        if not path.exists():
            atomic_write_bytes(path, Path(src).read_bytes())
        written.append(path)
    log.info("%d photos in %s", len(written), out)
    return written
