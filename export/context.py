"""The channel-conditional context (coder 6) in exact integers, and `aekit add-context` that ships one.

    aekit fit-context CKPT DATA --out runs/ctx            # aekit.context: train it (torch)
    aekit add-context models/photos-r9 runs/ctx/context.pt   # convert to integers, check, add to the folder

Minnen & Singh, "Channel-wise autoregressive entropy models for learned image compression" (ICIP 2020),
on top of the integer hyperprior: ŷ's c_y channels are coded in S slices; slice k's network reads the
hyperprior's μ and ln σ and ŷ of slices 0..k−1 and corrects μ and ln σ of its own channels, from which the
tables are chosen by the hyperprior's integer rule (aekit.export.hyperprior.choose_tables). The network
runs in integers (codec/FORMAT.md, "Coder 6"), like h_s, so encoder and decoder pick the same table for
every element on every machine. The context is an add-on of a model folder: `channel_context.npz` named by
`files.channel_context` and described by the manifest's `channel_context` (its sha256 is checked on load;
files coded with it carry the first 4 bytes of that hash, so a folder with another or no context refuses
them by name). The model id does not change: every file the model wrote before still decodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.entropy import CODER_CHANNEL_CONTEXT, EntropyError
from aekit.export.hyperprior import (EXACT_BITS, HYPER_ACT_BITS, HYPER_FRAC_BITS, _conv_blocks, _wmat, choose_tables,
                                     one_blas_thread)

log = logging.getLogger(__name__)

CONTEXT_FILE = "channel_context.npz"
CONTEXT_ID_BYTES = 4  # a coder-6 payload starts with the first 4 bytes of the context file's sha256
SLOPE_SHIFT = 2  # LeakyReLU slope 2^-2 (aekit.context.CONTEXT_SLOPE)
CAP = float((1 << HYPER_ACT_BITS) - 1)


class IntegerChannelContext:
    """Slice k's network in exact integers: [μ, ln σ, ŷ of slices < k] -> corrected (μ, ln σ) of slice k.

    Layers (manifest channel_context.layers[k], arrays s{k}w{i}, s{k}b{i} of channel_context.npz): 3×3
    convolutions, stride 1, zero padding 1, W_q = round(W · 2^s), b_q = round(b · 2^(s + 16)). Activations are
    integers in units of 2^-16 clamped to ±(2^26 − 1). Inputs: μ and ln σ of h_s (units 2^-F) rounded half up
    to 2^-16, ŷ = k·Δ exactly (k·D·2^14, D = 4Δ), each clamped. Each layer: acc = conv(a, W_q) + b_q (units
    2^-(s+16)); hidden layers a' = floor((acc + 2^(s−1)) / 2^s) where acc ≥ 0, floor((acc + 2^(s+1)) / 2^(s+2))
    where acc < 0 (LeakyReLU of slope 1/4, rounded half up), clamped; the last layer's output o is rounded the
    same way without the slope and clamped, and the corrected accumulators are μ' = μ + o_μ · 2^(F−16),
    ln σ' = ln σ + o_σ · 2^(F−16). Sums run as float64 products of integers below 2^53 (checked per layer), so
    the result is exact at any thread count and summation order. Raises EntropyError on malformed weights.
    """

    def __init__(self, spec: dict[str, Any], arrays: dict[str, np.ndarray]):
        try:
            self.channels, self.slices = int(spec["channels"]), int(spec["slices"])
            layers = spec["layers"]
            if self.slices < 2 or self.channels % self.slices or len(layers) != self.slices:
                raise ValueError(f"{self.slices} slices for {self.channels} channels")
            self.per = self.channels // self.slices
            self.nets = []
            for k, net in enumerate(layers):
                cin, out = 2 * self.channels + k * self.per, []
                for i, lay in enumerate(net):
                    w = np.asarray(arrays[f"s{k}w{i}"], dtype=np.int64)
                    b = np.asarray(arrays[f"s{k}b{i}"], dtype=np.int64)
                    shift = int(lay["shift"])
                    if w.ndim != 4 or w.shape[1:] != (cin, 3, 3) or b.shape != (w.shape[0],) or not 0 <= shift <= 30 or \
                            9 * cin * int(np.abs(w).max(initial=0)) * (1 << HYPER_ACT_BITS) + \
                            int(np.abs(b).max(initial=0)) >= 1 << EXACT_BITS:
                        raise ValueError(f"slice {k} layer {i}: shape {w.shape} / shift {shift} outside the contract")
                    out.append((shift, b.astype(np.float64), (0, 0, _wmat(w), (3, 3), (-1, -1))))
                    cin = w.shape[0]
                if cin != 2 * self.per:
                    raise ValueError(f"slice {k}: {cin} outputs, expected {2 * self.per}")
                self.nets.append(out)
        except (KeyError, TypeError, ValueError) as e:
            raise EntropyError(f"channel context: malformed ({e})") from None

    def slice_tables(self, k: int, mu: np.ndarray, log_scale: np.ndarray, sym: np.ndarray, f: int,
                     thresholds: np.ndarray, step4: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice k's (uint8 table, int8 base), each (c_y/S, h, w).

        mu, log_scale: h_s's int64 accumulators (c_y, h, w) in units of 2^-f (IntegerHyperDecoder.params);
        sym: int16 k = q − 127 (c_y, h, w), read only in slices < k; thresholds, step4: the quality's."""
        with one_blas_thread():
            o = self._run(k, mu, log_scale, sym, f, step4)
        lo, hi = k * self.per, (k + 1) * self.per
        up = np.int64(1) << np.int64(f - HYPER_FRAC_BITS)
        mu2 = mu[lo:hi] + o[:self.per] * up
        ls2 = log_scale[lo:hi] + o[self.per:] * up
        return choose_tables(mu2, ls2, thresholds, step4, f)

    def _run(self, k: int, mu: np.ndarray, log_scale: np.ndarray, sym: np.ndarray, f: int, step4: int) -> np.ndarray:
        """int64 (2·c_y/S, h, w): slice k's output o in units of 2^-16 (Δμ then Δ ln σ)."""
        _, h, w = mu.shape
        down = 2.0 ** -(f - HYPER_FRAC_BITS)  # a power of two: exact
        a = np.empty((h, w, 2 * self.channels + k * self.per), dtype=np.int32)
        for j, src in enumerate((mu, log_scale)):
            v = np.floor(src.astype(np.float64) * down + 0.5)  # round half up to 2^-16 (exact: |src| < 2^53)
            a[..., j * self.channels:(j + 1) * self.channels] = np.clip(v, -CAP, CAP).transpose(1, 2, 0)
        if k:
            yv = sym[:k * self.per].astype(np.int64) * (step4 << (HYPER_FRAC_BITS - 2))  # k·Δ in units of 2^-16
            a[..., 2 * self.channels:] = np.clip(yv, -CAP, CAP).transpose(1, 2, 0)
        net = self.nets[k]
        for i, (shift, bias, part) in enumerate(net):
            last = i == len(net) - 1
            nxt = np.empty((h, w, bias.size), dtype=np.int32)
            for r0, acc in _conv_blocks(a, part, bias, h, w, 0):
                neg = acc < 0
                pos_v = np.floor((acc + float(1 << shift >> 1)) * (1.0 / float(1 << shift)))
                if last:
                    v = np.where(neg, np.floor((acc + float(1 << shift >> 1)) * (1.0 / float(1 << shift))), pos_v)
                else:
                    v = np.where(neg, np.floor((acc + float(1 << (shift + SLOPE_SHIFT - 1))) *
                                               (1.0 / float(1 << (shift + SLOPE_SHIFT)))), pos_v)
                nxt[r0:r0 + acc.shape[0]] = np.clip(v, -CAP, CAP)
            a = nxt
        return a.transpose(2, 0, 1).astype(np.int64)


def load_context(manifest: dict[str, Any]) -> IntegerChannelContext | None:
    """The model folder's channel context (manifest channel_context + files.channel_context), or None.
    EntropyError when it is named but missing, altered (sha256) or malformed."""
    spec = manifest.get("channel_context")
    if not spec:
        return None
    folder, mid = Path(manifest.get("_dir", ".")), manifest.get("model_id")
    try:
        name = Path(manifest["files"]["channel_context"]).name
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != spec["sha256"]:
            raise EntropyError(f"model {mid}: {name} does not match the hash in its manifest (changed or swapped); "
                               "run aekit add-context again")
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (KeyError, TypeError, OSError, ValueError) as e:
        raise EntropyError(f"model {mid}: malformed channel context ({e})") from None
    ctx = IntegerChannelContext(spec, arrays)
    ctx.id = bytes.fromhex(spec["sha256"])[:CONTEXT_ID_BYTES]
    return ctx


def integer_context(ctx: Any) -> tuple[list[list[dict[str, int]]], dict[str, np.ndarray]]:
    """A trained aekit.models.context.ChannelContext -> (per-slice layer specs, int arrays) for
    IntegerChannelContext (aekit.export.onnx.integer_layer's shift rule per layer)."""
    from torch import nn

    from aekit.export.onnx import integer_layer, smallest_int

    specs, arrays = [], {}
    for k, net in enumerate(ctx.nets):
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        layers = []
        for i, conv in enumerate(convs):
            shift, wq, bq = integer_layer(conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy(),
                                          False, f"channel context slice {k}")
            layers.append({"shift": shift})
            arrays[f"s{k}w{i}"], arrays[f"s{k}b{i}"] = smallest_int(wq), smallest_int(bq)
        specs.append(layers)
    return specs, arrays


def add_context(model_dir: str | Path, context_pt: str | Path, images: str | Path | None = None,
                force: bool = False) -> dict[str, Any]:
    """Convert RUN/context.pt to integers and add it to the exported gdn-hp model folder (atomically: the new
    manifest replaces the old only after the check). The check codes up to 4 images (`images`, else the
    manifest's check crops) at every quality with and without the context in this process and decodes both.

    Returns the manifest's channel_context entry. Raises ValueError for a model without a hyperprior, a
    context trained for another latent width, or one already present (without force)."""
    from aekit.context import load_context as load_torch_context
    from aekit.export.manifest import load_manifest, save_manifest

    d = Path(model_dir)
    m = load_manifest(d)
    if "hyper" not in (m.get("entropy") or {}):
        raise ValueError(f"{d}: model {m['model_id']} has no hyperprior (a channel context needs arch gdn-hp)")
    if m.get("channel_context") and not force:
        raise ValueError(f"{d}: already has a channel context ({m['channel_context']['sha256'][:8]}); --force replaces it")
    ctx, saved = load_torch_context(context_pt)
    if ctx.channels != m["latent_channels"]:
        raise ValueError(f"{context_pt}: a context for {ctx.channels} latent channels; model {m['model_id']} has "
                         f"{m['latent_channels']}")
    specs, arrays = integer_context(ctx)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        path = Path(tmp) / CONTEXT_FILE
        np.savez_compressed(path, **arrays)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        entry = {"sha256": sha, "channels": ctx.channels, "slices": ctx.slices, "width": ctx.width,
                 "frac_bits": HYPER_FRAC_BITS, "act_bits": HYPER_ACT_BITS, "slope_shift": SLOPE_SHIFT, "layers": specs,
                 "model": "channel-conditional context (Minnen & Singh 2020) on the mean-scale hyperprior",
                 "fit": {k: saved.get("fit", {}).get(k) for k in ("data", "steps", "lr", "batch_size", "crop",
                                                                     "scales", "seed", "time_s", "val_data", "val_bpp")}}
        entry["check"] = _check(m, path, specs, arrays, images)
        shutil.copy(path, d / (CONTEXT_FILE + ".tmp"))
        (d / (CONTEXT_FILE + ".tmp")).replace(d / CONTEXT_FILE)
    m.pop("_dir", None)
    m["files"]["channel_context"] = CONTEXT_FILE
    m["channel_context"] = entry
    save_manifest(d, m)
    return entry


def _check(m: dict[str, Any], path: Path, specs: list, arrays: dict[str, np.ndarray],
           images: str | Path | None) -> dict[str, Any]:
    """Payload bytes of the codec's default coding (RDOQ, smallest payload) without the context and with it
    (coder 6 where it is smaller) on up to 4 centre crops at every quality; every coder-6 payload is decoded
    back and compared. ValueError if one does not decode to its symbols."""
    from aekit.export.entropy import RDOQ_MAX_SYMBOLS, RDOQ_T, EntropyModel
    from aekit.export.rescale import check_crops
    from aekit.export.runtime import Quantiser, Runtime

    crops, source = check_crops(m, 4, 256, images)
    rt = Runtime(m["_dir"], device="cpu")
    ys = [rt.encode(im[None]) for im in crops]
    spec = {"channels": m["latent_channels"], "slices": len(specs), "layers": specs}
    ctx_id = hashlib.sha256(path.read_bytes()).digest()[:CONTEXT_ID_BYTES]
    rows = []
    for entry in m["entropy"]["qualities"]:
        q_no = int(entry["quality"])
        qz, em = Quantiser.of(m, None, q_no), EntropyModel.from_manifest(m, rt.levels, q_no)
        em.context = IntegerChannelContext(spec, arrays)
        em.context.id = ctx_id
        before = after = 0
        for y in ys:
            sym = qz.quantise(y)[0]
            if sym.size <= RDOQ_MAX_SYMBOLS:
                sym = em.rdoq(sym, qz.residual(y)[0], RDOQ_T)
            old = em._encode_hyper_best(sym)[1]
            payload = em._encode_context(sym)
            if not np.array_equal(em.decode(CODER_CHANNEL_CONTEXT, payload, sym.shape), sym):
                raise ValueError(f"{path}: the channel context does not decode its own payload (quality {q_no})")
            before, after = before + len(old), after + min(len(old), len(payload))
        rows.append({"quality": q_no, "step": entry["step"], "bytes": before, "with_context": after,
                     "change_pct": round(100 * (after - before) / max(before, 1), 2)})
    return {"images": source, "qualities": rows}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add-context", help="add a trained channel context (aekit fit-context) to an exported gdn-hp "
                       "model folder: coder 6, fewer bits, same images, same model id")
    p.add_argument("model", help="exported model folder (aekit export)")
    p.add_argument("context", help="RUN/context.pt of aekit fit-context")
    p.add_argument("--images", help="folder of images for the check (default: the model's check crops)")
    p.add_argument("--force", action="store_true", help="replace a channel context the folder already has")
    p.set_defaults(func=cmd_add_context)


def cmd_add_context(args: argparse.Namespace) -> int:
    entry = add_context(args.model, args.context, args.images, args.force)
    print(json.dumps({"channel_context": entry["sha256"][:8], "check": entry["check"]}, indent=1))
    return 0
