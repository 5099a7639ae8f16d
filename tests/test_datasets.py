"""`aekit data photos`: the fixed held-out split, and `--more` (Plasma's photographs) joining the training split only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aekit import datasets
from aekit.cli import main


def _picture(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def sources(tmp_path):
    """A fake mate nature/ folder (one held-out, one training photo) and a fake Plasma wallpapers/ folder."""
    mate = tmp_path / "nature"
    _picture(mate / "Storm.jpg", 300, 200)
    _picture(mate / "Aqua.jpg", 2100, 900)
    plasma = tmp_path / "wallpapers"
    for i, name in enumerate(datasets.PLASMA_PHOTOS):
        images = plasma / name / "contents" / "images"
        _picture(images / "1920x1080.jpg", 400, 250, i)  # the name promises more pixels than the file has
        _picture(images / "720x1440.png", 300, 600, i)  # the largest picture: 180,000 px
        (images / "notes.txt").write_text("not a picture")
    return mate, plasma


def test_plasma_photos_picks_each_wallpapers_largest_picture_by_its_pixels(sources):
    _, plasma = sources
    found = datasets.plasma_photos(plasma)
    assert sorted(found) == sorted(datasets.PLASMA_PHOTOS)
    assert all(p.name == "720x1440.png" for p in found.values())


def test_a_missing_wallpaper_is_named(sources):
    _, plasma = sources
    for p in (plasma / "Kite" / "contents" / "images").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"wallpapers/Kite: no wallpaper pictures"):
        datasets.plasma_photos(plasma)


def test_more_photos_join_the_training_split_and_leave_the_held_out_split_alone(sources, tmp_path):
    mate, plasma = sources
    base = datasets.photos(tmp_path / "base", mate)
    more = datasets.photos(tmp_path / "more", mate, more=True, plasma=plasma)
    assert more == {"train": base["train"] + len(datasets.PLASMA_PHOTOS), "test": base["test"]}
    test_base = sorted(p.name for p in (tmp_path / "base" / "test").iterdir())
    assert sorted(p.name for p in (tmp_path / "more" / "test").iterdir()) == test_base
    assert "Storm.png" in test_base and (tmp_path / "more" / "train" / "Aqua.png").is_file()
    for name in datasets.PLASMA_PHOTOS:
        with Image.open(tmp_path / "more" / "train" / f"plasma-{name}.png") as im:
            assert im.mode == "RGB" and im.size == (300, 600)  # below PHOTO_MAX_SIDE: not reduced
    with Image.open(tmp_path / "more" / "train" / "Aqua.png") as im:
        assert im.size == (700, 300)  # 2100 px wide: reduced 3x to fit PHOTO_MAX_SIDE


def test_cli_names_a_wallpapers_folder_it_cannot_use_and_writes_nothing(sources, tmp_path, capsys):
    mate, _ = sources
    out = tmp_path / "out"
    rc = main(["data", "photos", str(out), "--mate", str(mate), "--more", "--plasma", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("aekit data photos: error: ") and "nowhere/BytheWater: no wallpaper pictures" in err[-1]
