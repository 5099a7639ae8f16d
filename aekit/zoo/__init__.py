"""The model zoo: reference models shipped inside the package, one folder per name.

    from aekit.zoo import names, path
    path("photos-r4")  # .../aekit/zoo/photos-r4: encoder.onnx, decoder.onnx, manifest.json, card.json
Only where the models are lives here (core layer): resolving names, checking files against the
model id and rendering cards is aekit.export.zoo; bench/train_zoo.sh rebuilds every model.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent  # the zoo's models are its subfolders that hold a manifest.json
MANIFEST = "manifest.json"
CARD = "card.json"  # the model card, rendered by `aekit models show NAME`


def names() -> list[str]:
    """Names of the shipped models, sorted."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / MANIFEST).is_file())


def path(name: str) -> Path | None:
    """The folder of a shipped model, or None if no model of that name ships."""
    d = ZOO_DIR / name
    return d if name and "/" not in name and name not in (".", "..") and (d / MANIFEST).is_file() else None


def contains(folder: str | Path) -> bool:
    """True if folder is (inside) a shipped model's folder."""
    try:
        Path(folder).resolve().relative_to(ZOO_DIR)
    except ValueError:
        return False
    return True
