"""Shared fixtures: small image folders and tiny trained + exported models.

Every model fixture trains for a few seconds on data that needs no download: gray models on
28x28 patches of the gray photos bundled with scikit-image (`gray_dir`, ten classes, made here),
RGB models on the scikit-image/scikit-learn photos. Tests on real Fashion-MNIST (`fmnist_dir`,
Debian's dataset-fashion-mnist) are marked `fmnist`: skipped where it is not installed, except
under AEKIT_REQUIRE_DATA=1 (CI), where a missing dataset fails them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _share_cores_among_xdist_workers() -> None:
    """Under pytest-xdist, worker i of n runs on every n-th usable core from the i-th (2 cores, 2 workers: one
    each), and so do the processes it starts: aekit sizes torch's and onnxruntime's threads by the affinity
    mask (aekit.machine.usable_cores), so two workers never run 2 + 2 spinning threads on 2 cores."""
    worker, n = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or n < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= n:
        os.sched_setaffinity(0, cores[int(worker[2:]) % n::n])
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_share_cores_among_xdist_workers()  # before numpy/torch start their thread pools

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aekit.datasets import FASHION_MNIST_DIRS  # noqa: E402

ROOT_TESTS = Path(__file__).resolve().parent
HAVE_FMNIST = any(Path(d).is_dir() for d in FASHION_MNIST_DIRS)
REQUIRE_DATA = os.environ.get("AEKIT_REQUIRE_DATA") == "1"
FMNIST_MISSING = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST and not REQUIRE_DATA, reason=FMNIST_MISSING)

# gray photos bundled with scikit-image: one class each (natural, text, texture and microscopy)
GRAY_SOURCES = ("camera", "coins", "moon", "page", "text", "clock", "grass", "gravel", "brick", "cell")


def pytest_sessionstart(session):
    """CI (AEKIT_REQUIRE_DATA=1) stops at once when what it needs is missing, instead of skipping."""
    import shutil

    if REQUIRE_DATA:
        missing = [what for what, ok in (("dataset-fashion-mnist", HAVE_FMNIST),
                                         ("chromium", bool(shutil.which("chromium") or shutil.which("chromium-browser"))))
                   if not ok]
        if missing:
            raise pytest.UsageError(f"AEKIT_REQUIRE_DATA=1 but not installed: {', '.join(missing)} (apt-get install -y ...)")


# Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) each module's tests run on one worker, so
# its module fixtures are made once; the modules that start a local Ray cluster share one worker (two clusters at
# once would each take the machine's cores), and the longest modules are handed out first.
RAY_MODULES = ("test_ray_engine", "test_detector_ray_maps")
FIRST_MODULES = ("test_robust_serve", "test_aekit_techniques", "test_codec_rd", "test_codec_hyperprior",
                 "test_codec_channel_context", "test_rescale", "test_import", "test_export_lean", "test_serve_learn")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Real Fashion-MNIST tests get the `fmnist` marker; `gpu` tests are skipped where no GPU is visible;
    every test gets its xdist group (its module, or "ray") and the longest modules come first."""
    from aekit.export.runtime import gpu_visible

    no_gpu = None if gpu_visible() else pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "fmnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fmnist)
        if no_gpu and item.get_closest_marker("gpu"):
            item.add_marker(no_gpu)
        module = _module(item)
        item.add_marker(pytest.mark.xdist_group("ray" if module in RAY_MODULES else module))
    rank = {m: i for i, m in enumerate(FIRST_MODULES)}
    items.sort(key=lambda it: rank.get(_module(it), len(rank)))  # stable: order kept within


def _module(item) -> str:
    """The test module's name (test_codec_rd), or the file part of the node id for items without one."""
    module = getattr(item, "module", None)
    return module.__name__ if module is not None else item.nodeid.split("::")[0]


def shared_dir(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """A session folder made once per test run: with pytest-xdist, the first worker that asks makes it (`make(out)`)
    while the others wait on a file lock, then all use it; without xdist, the session's own temp folder."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    out = root / "shared" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):
        if not (out.parent / f"{name}.done").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            (out.parent / f"{name}.done").touch()
    return out


def require_fmnist() -> None:
    if HAVE_FMNIST:
        return
    if REQUIRE_DATA:
        pytest.fail(f"AEKIT_REQUIRE_DATA=1 but {FMNIST_MISSING}")
    pytest.skip(FMNIST_MISSING)


def write_gray_classes(out: Path, train: int = 64, test: int = 32, side: int = 28, seed: int = 0) -> Path:
    """Ten classes of side x side gray patches cut from scikit-image's bundled photos.

    Each photo is scaled so its short side is 4 * side, then `train` + `test` seeded crops are
    written as out/{train,test}/<photo>/NNNN.png: the layout of `aekit data fashion-mnist`.
    """
    import skimage.data
    from PIL import Image

    from aekit.images import save_image

    rng = np.random.default_rng(seed)
    for name in GRAY_SOURCES:
        im = Image.fromarray(getattr(skimage.data, name)())
        k = 4 * side / min(im.size)
        arr = np.asarray(im.resize((round(im.width * k), round(im.height * k)), Image.LANCZOS))
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                y, x = rng.integers(0, arr.shape[0] - side + 1), rng.integers(0, arr.shape[1] - side + 1)
                save_image(np.ascontiguousarray(arr[y:y + side, x:x + side, None]), out / split / name / f"{i:04d}.png")
    return out


@pytest.fixture(scope="session")
def gray_dir(tmp_path_factory) -> Path:
    """Ten classes of 28x28 gray patches of scikit-image's photos: train/ (64 each), test/ (32 each)."""
    return shared_dir(tmp_path_factory, "gray", write_gray_classes)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST as class folders: first 600 train and 300 test images (train/, test/)."""
    require_fmnist()
    from aekit.datasets import fashion_mnist

    return shared_dir(tmp_path_factory, "fmnist", lambda out: fashion_mnist(out, limit=600))


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """The photos bundled with scikit-image and scikit-learn (16 files, gray and RGB)."""
    from aekit.datasets import sample_photos

    return shared_dir(tmp_path_factory, "photos", sample_photos)


@pytest.fixture(scope="session")
def rgb_photos(photos_dir) -> list[np.ndarray]:
    """RGB photos as uint8 arrays (H, W, 3), at their native sizes."""
    from aekit.images import load_image

    return [load_image(p, 3, strict=True)[0] for p in sorted(photos_dir.iterdir())
            if p.name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.png", "china.jpg")]


@pytest.fixture(scope="session")
def hp_model(tmp_path_factory, photos_dir) -> Path:
    """A small gdn-hp model at 1/9, RD-trained for seconds on the bundled photos, exported (its run folder is
    the parent of the manifest's training.checkpoint)."""
    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.export.onnx import export_model
    from aekit.train import TrainConfig, train

    def make(root: Path) -> None:
        tcfg = TrainConfig(data=str(photos_dir), out=str(root / "run"), epochs=3, batch_size=8, lr=1e-3, seed=0,
                           rate_weight=0.01, data_cfg=DataConfig(resize="random-crop", size=96, repeat=2, workers=2))
        train(tcfg, ModelConfig(arch="gdn-hp", channels=3, ratio=9, width=16))
        export_model(root / "run" / "best.pt", root / "hp-r9", speed=False)

    return shared_dir(tmp_path_factory, "hp-model", make) / "hp-r9"


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """Factory: train_tiny(channels, ratio, data="", **overrides) -> run folder with best.pt (cached)."""
    cache: dict[tuple, Path] = {}

    def make(channels: int = 1, ratio: int = 4, data: str = "", **over) -> Path:
        key = (channels, ratio, data, tuple(sorted(over.items())))
        if key in cache:
            return cache[key]
        from aekit.config import ModelConfig
        from aekit.data import DataConfig
        from aekit.train import TrainConfig, train

        if channels == 1 and data == "fmnist":  # for tests whose scores assume Fashion-MNIST-like images
            require_fmnist()
            from aekit.datasets import fashion_mnist

            src = shared_dir(tmp_path_factory, "tiny-fmnist", lambda out: fashion_mnist(out, limit=256))
            dcfg = DataConfig(resize="none", workers=2)
            folder = str(src / "train")
        elif channels == 1:
            src = shared_dir(tmp_path_factory, "tiny-gray", lambda out: write_gray_classes(out, train=26, test=0))
            dcfg = DataConfig(resize="none", workers=2)
            folder = str(src / "train")
        else:
            from aekit.datasets import sample_photos

            dcfg = DataConfig(resize="random-crop", size=48, repeat=4, workers=2)
            folder = str(shared_dir(tmp_path_factory, "tiny-photos", sample_photos))
        mcfg = ModelConfig(channels=channels, ratio=ratio, width=over.pop("width", 8), blocks=over.pop("blocks", 0), **over)

        def make_run(out: Path) -> None:
            tcfg = TrainConfig(data=folder, out=str(out), epochs=3, batch_size=16, lr=3e-3, seed=0,
                               data_cfg=dcfg, hist_images=256)
            train(tcfg, mcfg)

        name = f"run-c{channels}-r{ratio}{data}" + "".join(f"-{k}{v}" for k, v in key[3])
        cache[key] = shared_dir(tmp_path_factory, name, make_run)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(train_tiny, tmp_path_factory):
    """Factory: tiny_model(channels, ratio, data="") -> exported model folder (cached)."""
    cache: dict[tuple, Path] = {}

    def make(channels: int = 1, ratio: int = 4, data: str = "") -> Path:
        """data="fmnist": the gray model trained on Fashion-MNIST (a real-data test), else on gray_dir's patches."""
        if (channels, ratio, data) not in cache:
            from aekit.export.onnx import export_model

            run = train_tiny(channels, ratio, data)
            name = f"model-c{channels}-r{ratio}{data}"
            cache[(channels, ratio, data)] = shared_dir(
                tmp_path_factory, name, lambda out: export_model(run / "best.pt", out / "model")) / "model"
        return cache[(channels, ratio, data)]

    return make


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per test module (Ray's start-up costs seconds, not each test's); stopped
    after the module so later tests run without Ray's processes. Skips where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install -e '.[ray]' (extra aekit[ray])")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def killed_screen(folder: Path, fresh_jsonl: Path, name: str = "k") -> tuple[Path, list[str], int, str]:
    """What a screen killed mid-record leaves in `folder`: the temp file '.NAME.jsonl.PID-START….part' of a
    process that no longer runs, holding the first half of a finished screen's records and a torn one.

    Returns (that file, the finished screen's record lines, the dead PID, the run's start stamp)."""
    lines = fresh_jsonl.read_text().splitlines(keepends=True)
    half = len(lines) // 2
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    start = f"t{int(time.time() * 1000):x}_"
    killed = folder / f".{name}.jsonl.{dead.pid}-{start}abc123.part"
    killed.write_text("".join(lines[:half]) + lines[half][:25])  # killed mid-record: a torn last line
    return killed, lines, dead.pid, start
