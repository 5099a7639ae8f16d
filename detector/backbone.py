"""Pretrained-backbone feature scores: PaDiM (Defard et al. 2020) and PatchCore (Roth et al. 2022).

    aekit calibrate models/m normal/ --score padim --backbone-weights resnet18.pth   # torch once, to export
    aekit screen models/m incoming/ --out results/s                                 # onnxruntime + numpy
A torchvision ResNet / WideResNet trunk loaded from a local weights file is exported to ONNX
(`backbone.onnx` beside the model's own files, described by `backbone.json`): image -> resized
to side x side, ImageNet-normalised -> layer2 and layer3 (upsampled to layer2's grid, nearest)
concatenated. Screening runs that file on onnxruntime; torch is needed only to export it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aekit.detector.features import _nn_distances

BACKBONE_ONNX, BACKBONE_JSON = "backbone.onnx", "backbone.json"
ARCHS = {"resnet18": 384, "resnet34": 384, "resnet50": 1536, "wide_resnet50_2": 1536}  # layer2 + layer3 channels
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PADIM, PATCHCORE = "padim", "patchcore"  # score parts that need the backbone
PADIM_EPS = 0.01  # added to each covariance diagonal (PaDiM's regulariser)


class BackboneError(Exception):
    """Missing, unreadable or mismatched backbone files (names the file and what was expected)."""


@dataclass
class BackboneConfig:
    arch: str = "resnet18"  # torchvision architecture the weights file belongs to (ARCHS)
    side: int = 224  # images are resized to side x side (px) before the trunk; features at side / 8
    dims: int = 100  # PaDiM: channels kept (a seeded random subset, as in the paper)
    weights_sha256: str = ""  # of the weights file exported (recorded, never re-read)


def export_backbone(weights: str | Path, model_dir: str | Path, cfg: BackboneConfig | None = None) -> Path:
    """Export a torchvision trunk with local weights to MODEL_DIR/backbone.onnx (+ backbone.json); returns the
    ONNX path. weights: a state_dict file (torch.save) of torchvision.models.ARCH; no download is tried.
    BackboneError for an unknown arch or weights that do not fit it (one line)."""
    import torch
    import torchvision

    cfg = cfg or BackboneConfig()
    if cfg.arch not in ARCHS:
        raise BackboneError(f"backbone {cfg.arch!r} unknown (have: {', '.join(ARCHS)})")
    weights, model_dir = Path(weights), Path(model_dir)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = getattr(torchvision.models, cfg.arch)(weights=None)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (OSError, RuntimeError, ValueError, AttributeError, KeyError) as e:
        raise BackboneError(f"{weights}: not a {cfg.arch} state_dict ({type(e).__name__}: {str(e)[:200]})") from None
    trunk = _trunk(net.eval(), cfg.side)
    path = model_dir / BACKBONE_ONNX
    tmp = model_dir / f".{BACKBONE_ONNX}.part"
    example = torch.rand(2, 3, 32, 40)
    # the TorchScript exporter: the dynamo one took 6.5 min for ResNet-18 on a shared CPU (13 s here)
    torch.onnx.export(trunk, (example,), str(tmp), input_names=["image"], output_names=["features"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}}, opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = trunk(example).numpy()
    got = _session(tmp).run(None, {"image": example.numpy()})[0]
    if not np.allclose(got, ref, atol=1e-3, rtol=1e-3):
        tmp.unlink(missing_ok=True)
        raise BackboneError(f"{path}: ONNX features differ from torch's (max {np.abs(got - ref).max():.2g})")
    tmp.replace(path)
    cfg.weights_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model_dir / BACKBONE_JSON).write_text(json.dumps({**asdict(cfg), "onnx_sha256": _sha(path)}, indent=1) + "\n")
    return path


def _trunk(net, side: int):
    """The exported module: (B, 3, H, W) in [0, 1] -> (B, c2 + c3, side/8, side/8), layer2 ++ layer3
    (nearest-upsampled to layer2's grid). Defined here so torch is imported only to export."""
    import torch
    import torch.nn.functional as F

    class Trunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)  # (B, 3, S, S)
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1((x - self.mean) / self.std))))  # (B, 64, S/4, S/4)
            f2 = n.layer2(n.layer1(x))  # (B, c2, S/8, S/8)
            f3 = n.layer3(f2)  # (B, c3, S/16, S/16)
            return torch.cat([f2, F.interpolate(f3, size=f2.shape[-2:], mode="nearest")], dim=1)

    return Trunk().eval()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(path: Path, providers: list[str] | None = None, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


class BackboneRuntime:
    """The exported trunk of a model folder on onnxruntime: uint8 images -> features (numpy only)."""

    def __init__(self, model_dir: str | Path, threads: int = 0):
        d = Path(model_dir)
        meta_f, onnx_f = d / BACKBONE_JSON, d / BACKBONE_ONNX
        if not meta_f.is_file() or not onnx_f.is_file():
            raise BackboneError(f"{d}: no {BACKBONE_ONNX}; export one with `aekit calibrate {d} NORMAL_DIR "
                                f"--score padim --backbone-weights FILE` (a torchvision ResNet state_dict)")
        meta = json.loads(meta_f.read_text())
        self.id = _sha(onnx_f)
        if meta.get("onnx_sha256") != self.id:
            raise BackboneError(f"{onnx_f}: does not match the sha256 in {BACKBONE_JSON}; export it again")
        self.cfg = BackboneConfig(**{k: meta[k] for k in ("arch", "side", "dims", "weights_sha256")})
        self.session = _session(onnx_f, threads=threads)

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C), C 1 or 3 -> float32 (B, D, side/8, side/8); gray is replicated to RGB."""
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (B, C, H, W)
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        return self.session.run(None, {"image": np.ascontiguousarray(x)})[0]


# ---- PaDiM: a Gaussian per feature position --------------------------------------------------
def padim_fit(feats: np.ndarray, dims: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Features (N, D, h, w) of normal images -> {'idx' (d,), 'mean' (h*w, d), 'icov' (h*w, d, d), 'grid'}."""
    n, d_all, h, w = feats.shape
    idx = np.sort(np.random.default_rng(seed).permutation(d_all)[: min(dims, d_all)])
    f = feats[:, idx].reshape(n, len(idx), h * w).transpose(2, 0, 1).astype(np.float64)  # (P, N, d)
    mean = f.mean(axis=1)  # (P, d)
    c = f - mean[:, None]
    cov = np.einsum("pni,pnj->pij", c, c) / max(n - 1, 1) + PADIM_EPS * np.eye(len(idx))  # (P, d, d)
    return {"idx": idx, "mean": mean.astype(np.float32), "icov": np.linalg.inv(cov).astype(np.float32),
            "grid": np.array([h, w])}


def padim_maps(feats: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    """Mahalanobis distance of each position to its normal Gaussian: (B, D, h, w) -> (B, h, w)."""
    b, _, h, w = feats.shape
    if (h, w) != tuple(a["grid"]):
        raise BackboneError(f"PaDiM was fitted on a {tuple(a['grid'])} feature grid, got {(h, w)}; recalibrate")
    f = feats[:, a["idx"]].reshape(b, len(a["idx"]), h * w).transpose(0, 2, 1)  # (B, P, d)
    delta = f - a["mean"][None]
    m2 = np.einsum("bpi,pij,bpj->bp", delta, a["icov"], delta)
    return np.sqrt(np.maximum(m2, 0.0)).reshape(b, h, w)


# ---- PatchCore: nearest neighbour in a coreset of locally aggregated patches ------------------
def _aggregate(feats: np.ndarray) -> np.ndarray:
    """3 x 3 local mean of (B, D, h, w) (edge-replicated), as PatchCore's neighbourhood aggregation."""
    p = np.pad(feats, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = feats.shape[2:]
    return sum(p[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def coreset(x: np.ndarray, k: int, seed: int = 0, proj_dims: int = 128) -> np.ndarray:
    """Indices of k rows of x (M, D) chosen by greedy k-center on a random projection (PatchCore's coreset)."""
    m = len(x)
    if k >= m:
        return np.arange(m)
    rng = np.random.default_rng(seed)
    z = x @ rng.normal(size=(x.shape[1], min(proj_dims, x.shape[1]))).astype(np.float32)  # (M, d')
    chosen = [int(rng.integers(m))]
    dist = np.sum((z - z[chosen[0]]) ** 2, axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.sum((z - z[i]) ** 2, axis=1))
    return np.array(chosen)


def patchcore_fit(feats: np.ndarray, bank_size: int, seed: int = 0, max_candidates: int = 65536) -> dict[str, np.ndarray]:
    """Features (N, D, h, w) of normal images -> {'bank' (M, D) float32}: a greedy coreset of at most
    bank_size patch vectors, drawn from at most max_candidates random patches (bounds the fit time)."""
    f = _aggregate(feats).transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]).astype(np.float32)
    rng = np.random.default_rng(seed)
    if len(f) > max_candidates:
        f = f[rng.permutation(len(f))[:max_candidates]]
    return {"bank": f[coreset(f, bank_size, seed)]}


def patchcore_maps(feats: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    """Distance of each aggregated patch to its nearest bank vector: (B, D, h, w) -> (B, h, w)."""
    b, d, h, w = feats.shape
    q = _aggregate(feats).transpose(0, 2, 3, 1).reshape(-1, d).astype(np.float32)
    return _nn_distances(q, a["bank"])[0][:, 0].reshape(b, h, w)
