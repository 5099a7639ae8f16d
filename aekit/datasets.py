"""Real image data that installs with packages: Fashion-MNIST (Debian) and bundled photos.

    aekit data fashion-mnist data/fmnist        # train/ and test/ class folders of PNGs
    aekit data samples data/photos              # scikit-image + scikit-learn photos
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

from collections.abc import Callable

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


# The real-photo set (`aekit data photos`): bundled colour photos plus Debian's mate-backgrounds
# nature/ photographs. The held-out split is fixed by name, so every machine and every result
# names the same test images; everything else is for training.
MATE_NATURE_DIRS = ("/usr/share/backgrounds/mate/nature",)
MATE_PACKAGE = "mate-backgrounds"
PHOTO_COLOUR_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
                        "immunohistochemistry")  # colour photographs only (colorwheel is synthetic)
PHOTO_TEST = ("astronaut", "coffee", "LadyBird", "Storm", "GreenMeadow")  # held out from training
PHOTO_MAX_SIDE = 1024  # JPEG sources are downscaled (antialiased) so their 8x8 block artefacts vanish
# `aekit data photos --more`: the photographs among KDE Plasma 5.27's wallpapers (Debian's
# plasma-workspace-wallpapers; the others are drawn or rendered), for training only. Each wallpaper folder holds
# one picture at several sizes; the largest is used, downscaled like mate-backgrounds'.
PLASMA_PACKAGE = "plasma-workspace-wallpapers"
PLASMA_WALLPAPER_DIR = "/usr/share/wallpapers"
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "Volna", "summer_1am")


def find_mate_nature(cache: str | Path | None = None) -> Path | None:
    """mate-backgrounds' nature/ folder: installed, or unpacked with `apt-get download` + `dpkg -x`.

    Returns None when neither works (no Debian tools or no package index); nothing is installed.
    """
    return find_package_folder(MATE_PACKAGE, MATE_NATURE_DIRS[0], cache)


def find_plasma_wallpapers(cache: str | Path | None = None) -> Path | None:
    """plasma-workspace-wallpapers' wallpapers/ folder (one sub-folder per wallpaper), found like
    find_mate_nature: installed, else unpacked from `apt-get download` (a 94 MB package) into the cache."""
    return find_package_folder(PLASMA_PACKAGE, PLASMA_WALLPAPER_DIR, cache)


def find_package_folder(package: str, folder: str, cache: str | Path | None = None) -> Path | None:
    """The absolute folder `folder` of Debian package `package`: installed, or unpacked with
    `apt-get download` + `dpkg -x` into cache (default ~/.cache/aekit/PACKAGE; reused next time).

    Returns None when neither works (no Debian tools, no package index, or the package lacks the
    folder); nothing is installed.
    """
    import shutil
    import subprocess
    import tempfile

    if Path(folder).is_dir():
        return Path(folder)
    cache = Path(cache or Path.home() / ".cache" / "aekit" / package)
    unpacked = cache / folder.lstrip("/")
    if unpacked.is_dir():
        return unpacked
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if r.returncode or not debs:
            log.warning("apt-get download %s failed: %s", package, r.stderr.strip()[-200:])
            return None
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(cache)], check=True)
    return unpacked if unpacked.is_dir() else None


def photos(out: str | Path, mate: str | Path | None = None, more: bool = False,
           plasma: str | Path | None = None) -> dict[str, int]:
    """Write the real-photo set as PNG: OUT/train/*.png and OUT/test/*.png (names in PHOTO_TEST).

    Sources: scikit-image's colour photographs, scikit-learn's china/flower, and the 12
    photographs of Debian's mate-backgrounds (1.3-14 Mpx JPEGs) downscaled so the long side
    is at most PHOTO_MAX_SIDE. mate: its nature/ folder (default: found or unpacked by
    find_mate_nature); without it the set has the bundled photos only, and a note says so.
    more: also the 12 photographs among KDE Plasma's wallpapers (PLASMA_PHOTOS, 2.6-14.7 Mpx,
    written as train/plasma-NAME.png, downscaled the same way; plasma: their wallpapers/ folder,
    default found or unpacked by find_plasma_wallpapers). They only ever join the training split:
    the held-out test/ split is the same with or without them.
    Returns {"train": n, "test": n}. Existing files are kept (re-running is cheap).
    Raises FileNotFoundError when more is set and the Plasma wallpapers cannot be found or unpacked.
    """
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = Path(out)
    sources: dict[str, Callable[[], np.ndarray]] = {n: (lambda n=n: getattr(skimage.data, n)()) for n in PHOTO_COLOUR_SKIMAGE}
    for f in load_sample_images().filenames:
        sources[Path(f).stem] = lambda f=f: np.asarray(Image.open(f).convert("RGB"))
    nature = Path(mate) if mate else find_mate_nature()
    if nature is None:
        log.warning("mate-backgrounds not found (apt-get download mate-backgrounds failed): "
                    "the photo set has the bundled photos only")
    else:
        for f in sorted(nature.glob("*.jpg")):
            sources[f.stem] = lambda f=f: _downscaled(f)
    if more:
        for name, f in plasma_photos(plasma).items():
            sources[f"plasma-{name}"] = lambda f=f: _downscaled(f)
    counts = {"train": 0, "test": 0}
    for name, load in sources.items():
        split = "test" if name in PHOTO_TEST else "train"
        path = out / split / f"{name}.png"
        if not path.exists():
            save_image(np.ascontiguousarray(load()[:, :, :3].astype(np.uint8)), path)
        counts[split] += 1
    log.info("%d training and %d held-out photos in %s", counts["train"], counts["test"], out)
    return counts


def plasma_photos(folder: str | Path | None = None) -> dict[str, Path]:
    """{name: the largest picture (by pixels) of each PLASMA_PHOTOS wallpaper} under folder/NAME/contents/images/.

    folder: Plasma's wallpapers/ folder (default: find_plasma_wallpapers). Raises FileNotFoundError naming the
    folder when it cannot be found or lacks one of the wallpapers (another Plasma version may rename them).
    """
    from PIL import Image

    root = Path(folder) if folder else find_plasma_wallpapers()
    if root is None:
        raise FileNotFoundError(f"{PLASMA_WALLPAPER_DIR}: not installed, and apt-get download {PLASMA_PACKAGE} failed")
    found = {}
    for name in PLASMA_PHOTOS:
        pics = [p for p in sorted((root / name / "contents" / "images").glob("*")) if p.suffix.lower() in (".jpg", ".png")]
        if not pics:
            raise FileNotFoundError(f"{root / name}: no wallpaper pictures (contents/images/*.jpg|png)")
        sizes = {}
        for p in pics:  # file names give the intended screen, not always the picture's size: read the headers
            with Image.open(p) as im:
                sizes[p] = im.size[0] * im.size[1]
        found[name] = max(pics, key=lambda p: sizes[p])
    return found


def _downscaled(path: Path) -> np.ndarray:
    """A photograph (JPEG or PNG) as uint8 RGB, long side reduced to PHOTO_MAX_SIDE by an integer factor."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        k = -(-max(im.size) // PHOTO_MAX_SIDE)  # integer factor: every output pixel averages k x k
        if k > 1:
            im = im.reduce(k)
        return np.asarray(im)
