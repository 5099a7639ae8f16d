"""Feature-space anomaly scores on the model's own encoder output (memory banks, numpy only).

`FeatureBank` (score `feat`, PatchCore-style): each latent position gives a patch feature, the
latent channels of its 3 x 3 neighbourhood, standardised, plus its (row, col) so that aligned
objects compare like with like; a position's score is its distance to the nearest bank vector,
the image score the maximum over positions. `ImageBank` (score `knn`, deep nearest neighbours as
in Bergman et al. 2020): the whole standardised latent of an image against those of normal
images, the image score the mean distance to its k nearest. Banks are randomly subsampled to
at most `bank_size` vectors (bounded memory); no pretrained weights are needed.
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


def augmented(bank: np.ndarray) -> np.ndarray:
    """[-2b, |b|^2]^T (D+1, M) float32 of a bank (M, D): what _nn_distances multiplies by."""
    bank = np.asarray(bank, dtype=np.float32)
    return np.concatenate([-2.0 * bank, np.sum(bank * bank, axis=1, keepdims=True)], axis=1).T.copy()


def _nn_distances(q: np.ndarray, bank: np.ndarray, q_ids: np.ndarray | None = None,
                  bank_ids: np.ndarray | None = None, k: int = 1, aug: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(L2 distances (N, k) of each row of q (N, D) to its k nearest bank rows (M, D), ascending;
    their bank indices (N, k)). Rows of the same image (q_ids == bank_ids) are excluded
    (leave-one-image-out scores of the bank's own images).

    One float32 BLAS product per chunk gives |b|^2 - 2 q.b directly ([q, 1] @ [-2b, |b|^2]^T);
    |q|^2, which does not change the nearest rows, is added to the k minima only. aug: augmented(bank),
    when the caller keeps it."""
    aug = augmented(bank) if aug is None else aug  # (D+1, M)
    dist, idx = np.empty((len(q), k)), np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), ROW_CHUNK):
        qc = np.asarray(q[s : s + ROW_CHUNK], dtype=np.float32)
        d2 = np.concatenate([qc, np.ones((len(qc), 1), np.float32)], axis=1) @ aug  # (n, M)
        if q_ids is not None:
            d2[q_ids[s : s + ROW_CHUNK, None] == bank_ids[None, :]] = np.inf
        if k == 1:
            i = np.argmin(d2, axis=1)[:, None]
        else:
            i = np.argpartition(d2, k - 1, axis=1)[:, :k]
            i = np.take_along_axis(i, np.argsort(np.take_along_axis(d2, i, 1), axis=1), 1)
        best = np.take_along_axis(d2, i, 1).astype(np.float64) + np.sum(qc * qc, axis=1, dtype=np.float64)[:, None]
        dist[s : s + ROW_CHUNK], idx[s : s + ROW_CHUNK] = np.sqrt(np.maximum(best, 0.0)), i
    return dist, idx


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
        aug = self._aug(bank.shape[1] < self.bank.shape[1])
        d, _ = _nn_distances(f, bank, q_ids, self.ids if image_ids is not None else None, aug=aug)
        return d[:, 0].reshape(b, h, w)

    def _aug(self, appearance_only: bool = False) -> np.ndarray:
        """augmented() of the bank (or of its appearance columns), computed once."""
        key = f"_aug{int(appearance_only)}"
        if key not in self.__dict__:
            self.__dict__[key] = augmented(self.bank[:, :-2] if appearance_only else self.bank)
        return self.__dict__[key]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}bank": self.bank, f"{prefix}ids": self.ids, f"{prefix}mean": self.mean,
                f"{prefix}std": self.std, f"{prefix}grid": np.array(self.grid)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> "FeatureBank":
        g = a[f"{prefix}grid"]
        return cls(a[f"{prefix}bank"], a[f"{prefix}ids"], a[f"{prefix}mean"], a[f"{prefix}std"], (int(g[0]), int(g[1])))


def resample_latent(y: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) -> (B, C, *grid) by nearest neighbour (other image sizes against a fitted grid)."""
    h, w = y.shape[2:]
    if (h, w) == tuple(grid):
        return y
    rows = np.minimum((np.arange(grid[0]) * h) // grid[0], h - 1)
    cols = np.minimum((np.arange(grid[1]) * w) // grid[1], w - 1)
    return y[:, :, rows][:, :, :, cols]


@dataclass
class ImageBank:
    """Whole-image memory bank (score `knn`): standardised latents of normal images, fitted on normal
    images only. The image score is the mean L2 distance to the k nearest bank images; its map, the
    squared difference from the nearest one per latent position (summed over channels)."""

    bank: np.ndarray  # (M, C*h*w) float32 standardised latents
    ids: np.ndarray  # (M,) index of the fit image each row came from
    mean: np.ndarray  # (C*h*w,) per channel and position
    std: np.ndarray  # (C*h*w,)
    grid: tuple[int, int]  # latent (h, w) of the fit images
    k: int = 3  # nearest bank images averaged

    @classmethod
    def fit(cls, y: np.ndarray, bank_size: int = 8192, seed: int = 0, k: int = 3) -> "ImageBank":
        """Latents (B, C, h, w) of normal images -> bank of at most bank_size of them."""
        b, c, h, w = y.shape
        flat = y.reshape(b, -1).astype(np.float32)
        mean, std = flat.mean(0), flat.std(0) + 1e-3  # + 1e-3: constant positions (background) stay finite
        keep = np.sort(np.random.default_rng(seed).permutation(b)[:bank_size])
        return cls(((flat[keep] - mean) / std).astype(np.float32), keep, mean, std, (h, w), k)

    def scores(self, y: np.ndarray, image_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Latents (B, C, h, w) -> (scores (B,), maps (B, h, w) on the fitted grid).

        image_ids: indices of these images among the fit images (leave-one-image-out scores)."""
        y = resample_latent(y, self.grid)
        b, c = y.shape[:2]
        z = (y.reshape(b, -1).astype(np.float32) - self.mean) / self.std  # (B, D)
        k = min(self.k, len(self.bank) - (image_ids is not None))
        q_ids = None if image_ids is None else np.asarray(image_ids)
        if "_aug" not in self.__dict__:
            self.__dict__["_aug"] = augmented(self.bank)
        d, i = _nn_distances(z, self.bank, q_ids, self.ids if image_ids is not None else None, k, self.__dict__["_aug"])
        diff = (z - self.bank[i[:, 0]]).reshape(b, c, *self.grid)
        return d.mean(axis=1), np.sum(diff * diff, axis=1, dtype=np.float64)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}knn_bank": self.bank, f"{prefix}knn_ids": self.ids, f"{prefix}knn_mean": self.mean,
                f"{prefix}knn_std": self.std, f"{prefix}knn_grid": np.array(self.grid), f"{prefix}knn_k": np.array(self.k)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> "ImageBank":
        g = a[f"{prefix}knn_grid"]
        return cls(a[f"{prefix}knn_bank"], a[f"{prefix}knn_ids"], a[f"{prefix}knn_mean"], a[f"{prefix}knn_std"],
                   (int(g[0]), int(g[1])), int(a[f"{prefix}knn_k"]))
