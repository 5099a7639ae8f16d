"""The wheel installs one import name, `aekit`: the product's folders map into its namespace.

Builds a wheel from a copy of the sources (so the checkout gets no build/ folder) with the
setuptools already installed (no network) and reads its file list and top_level.txt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("aekit", "export", "codec", "detector", "bench", "serve")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (path,) = out.glob("aekit-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_one_import_name(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"aekit"}, f"wheel installs {sorted(tops)}, expected only aekit"
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(info).decode().split() == ["aekit"]


def test_wheel_holds_every_subpackage(wheel):
    names = set(wheel.namelist())
    for pkg in ("export", "codec", "detector", "bench", "serve"):
        assert f"aekit/{pkg}/__init__.py" in names, f"aekit.{pkg} missing from the wheel"
    assert "aekit/serve/index.html" in names or any(n.startswith("aekit/serve/") and n.endswith(".html") for n in names)
    entry = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    targets = [line.split("=", 1)[1].strip() for line in wheel.read(entry).decode().splitlines() if "=" in line]
    assert targets and all(t.startswith("aekit.") for t in targets), targets


def test_wheel_ships_the_model_zoo(wheel):
    from aekit import zoo

    from aekit.export.manifest import SHARED_TABLES

    names = set(wheel.namelist())
    for name in zoo.names():  # every shipped model: each file its manifest names, and its card (aekit models)
        files = json.loads((zoo.ZOO_DIR / name / "manifest.json").read_text())["files"].values()
        for f in (*files, "manifest.json", "card.json"):
            assert f"aekit/zoo/{name}/{f}" in names, f"aekit/zoo/{name}/{f} missing from the wheel"
    for f in SHARED_TABLES.values():  # the tables the zoo's manifests name instead of holding
        assert f"aekit/export/{f}" in names, f"aekit/export/{f} missing from the wheel"
