"""Feature-space anomaly score on the model's own encoder output (PatchCore-style memory bank, numpy only).

Each latent position gives a patch feature: the latent channels of its 3 x 3 neighbourhood,
standardised, plus its (row, col) so that aligned objects compare like with like. Normal
images' features form a memory bank (randomly subsampled to at most `bank_size` vectors:
bounded memory); a position's score is its distance to the nearest bank vector, the image
score the maximum over positions. No pretrained weights are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURHOOD = 3  # latent positions per side of a patch feature
ROW_CHUNK = 2048  # query vectors per distance matrix (bounds memory: ROW_CHUNK x bank_size floats)


def patch_features(y: np.ndarray, position_weight: float = 1.0) -> np.ndarray:
    """Latent (B, C, h, w) -> patch features (B, h, w, C*9 + 2): neighbourhood channels, then position."""
    b, c, h, w = y.shape
    r = NEIGHBOURHOOD // 2
    p = np.pad(y, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    parts = [p[:, :, i : i + h, j : j + w] for i in range(NEIGHBOURHOOD) for j in range(NEIGHBOURHOOD)]
    f = np.concatenate(parts, axis=1).transpose(0, 2, 3, 1)  # (B, h, w, 9C)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos = np.broadcast_to(np.stack([rows, cols], -1) * position_weight, (b, h, w, 2))
    return np.concatenate([f, pos], axis=-1).astype(np.float32)


def _nn_distances(q: np.ndarray, bank: np.ndarray, q_ids: np.ndarray | None = None,
                  bank_ids: np.ndarray | None = None) -> np.ndarray:
    """L2 distance of each row of q (N, D) to its nearest bank row (M, D); rows of the same
    image (q_ids == bank_ids) are excluded (leave-one-image-out scores of the bank's own images)."""
    bb = np.sum(bank * bank, axis=1)  # (M,)
    out = np.empty(len(q), dtype=np.float64)
    for s in range(0, len(q), ROW_CHUNK):
        qc = q[s : s + ROW_CHUNK]
        d2 = np.sum(qc * qc, axis=1)[:, None] + bb[None, :] - 2.0 * (qc @ bank.T)  # (n, M)
        if q_ids is not None:
            d2[q_ids[s : s + ROW_CHUNK, None] == bank_ids[None, :]] = np.inf
        out[s : s + ROW_CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


@dataclass
class FeatureBank:
    """Per-class memory bank of standardised patch features (fitted on normal images only)."""

    bank: np.ndarray  # (M, D) float32, standardised, position columns last
    ids: np.ndarray  # (M,) index of the fit image each vector came from
    mean: np.ndarray  # (D - 2,) feature means (standardisation)
    std: np.ndarray  # (D - 2,)
    grid: tuple[int, int]  # latent (h, w) of the fit images

    @classmethod
    def fit(cls, y: np.ndarray, bank_size: int = 8192, seed: int = 0) -> "FeatureBank":
        """Latents (B, C, h, w) of normal images -> bank of at most bank_size random patch vectors."""
        f = patch_features(y, 1.0)  # (B, h, w, D)
        b, h, w, d = f.shape
        flat = f.reshape(-1, d)
        mean, std = flat[:, :-2].mean(0), flat[:, :-2].std(0) + 1e-6
        ids = np.repeat(np.arange(b), h * w)
        keep = np.random.default_rng(seed).permutation(len(flat))[:bank_size]
        bank = cls(np.empty((0, d), np.float32), ids[keep], mean.astype(np.float32), std.astype(np.float32), (h, w))
        bank.bank = bank.standardise(f).reshape(-1, d)[keep]
        return bank

    def standardise(self, f: np.ndarray) -> np.ndarray:
        """Patch features (..., D) -> standardised channels; position in latent cells (1 cell ~ 1 std)."""
        out = f.copy()
        out[..., :-2] = (f[..., :-2] - self.mean) / self.std
        return out

    def score_maps(self, y: np.ndarray, image_ids: np.ndarray | None = None) -> np.ndarray:
        """Latents (B, C, h, w) -> nearest-neighbour distance maps (B, h, w).

        image_ids: indices of these images among the fit images (leave-one-image-out scores)."""
        b, _, h, w = y.shape
        f = self.standardise(patch_features(y, 1.0)).reshape(b * h * w, -1)
        if (h, w) != self.grid:  # other image sizes: compare appearance only, not position
            f, bank = f[:, :-2], self.bank[:, :-2]
        else:
            bank = self.bank
        q_ids = None if image_ids is None else np.repeat(np.asarray(image_ids), h * w)
        return _nn_distances(f, bank, q_ids, self.ids if image_ids is not None else None).reshape(b, h, w)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}bank": self.bank, f"{prefix}ids": self.ids, f"{prefix}mean": self.mean,
                f"{prefix}std": self.std, f"{prefix}grid": np.array(self.grid)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> "FeatureBank":
        g = a[f"{prefix}grid"]
        return cls(a[f"{prefix}bank"], a[f"{prefix}ids"], a[f"{prefix}mean"], a[f"{prefix}std"], (int(g[0]), int(g[1])))
