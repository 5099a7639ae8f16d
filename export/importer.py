"""Exported rate–distortion models back to training checkpoints: fine-tune a shipped model.

    aekit import photos-r9 --out runs/photos-r9/imported.pt
    aekit train data/mine --arch gdn-hp --ratio 9 --width 128 --init-from runs/photos-r9/imported.pt ...

The zoo ships ONNX graphs and integer tables, not checkpoints, and a run folder does not outlive the
machine it trained on. An exported `gdn`, `gdn-hp` or `klt` model holds everything its training
checkpoint's function needs, so the checkpoint is rebuilt from it:

- g_a and g_s: the weights of the encoder's and decoder's Conv / ConvTranspose nodes, in graph order,
  onto the model that the manifest's `model_config` builds (aekit.models), in module order. A GDN or
  IGDN exports as Conv(x·x; γ, β) (aekit.layers.GDN), so γ = g², β = b² + β_min give g = √γ and
  b = √(β − β_min) (the same function: GDN sees only the squares). The export folds the scalar latent
  gain into g_a's last and g_s's first layer (export/lean.py); `split_gain` takes it out again.
- h_a: hyper_encoder.onnx's convs. h_s: the integer hyper decoder (hyper_decoder.npz) divided back,
  W = W_q / 2^s, b = b_q / 2^(s + F_a) (aekit.export.hyperprior.IntegerHyperDecoder): a re-export
  gives the same integers wherever it picks the same shift s (today's exporter keeps weights in 16
  bits, so a layer an older export stored wider is re-quantised one shift lower).
- The factorized prior (z's for gdn-hp, y's for gdn and klt) is not in the folder as parameters, only
  as the integer tables it was exported to. A fresh FactorizedPrior (Ballé et al. 2018, §6.1) is fitted
  to those tables by minimising the cross-entropy Σ p_table · −log2 p_model over every symbol (and, for
  y's prior, every quality step's table set); the checkpoint records the bits per symbol it is off by.

A rescaled model (`aekit rescale`: photos-r4, photos-r4-hq) imports as its source transform: the Resize
nodes rescale added before the encoder and after the decoder (export/rescale.py) are taken out of the graphs
again, the model config gets the source's ratio back, and the checkpoint records the grid (`grid_scale`:
1.5 for photos-r4) that `aekit train`, `refit-hyperprior` and `fit-context` then read, so a fine-tune goes
on where the 1/4 model's own stage left off; export it and `aekit rescale` it again to ship it.

The result is checked before it is written: the rebuilt g_a and g_s against onnxruntime on real images
(relative error ≤ IMPORT_TOLERANCE; a rescaled model's against its source graphs), h_s against the integer
decoder. Int8-only models (photos-r9-fast) and the tanh-latent architectures are refused with a one-line
reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from aekit.export.manifest import ModelError, load_manifest

IMPORT_ARCHS = ("gdn", "gdn-hp", "klt")
IMPORT_TOLERANCE = 1e-3  # max |torch − onnxruntime| over max |onnxruntime| of y and x̂ on the check images
PRIOR_FIT_STEPS = 600  # Adam steps fitting the factorized prior to the stored tables (C × 255 values: < 2 s)
GRAPH_OPS = {"Conv", "ConvTranspose", "Mul", "Div", "Sqrt", "Add", "LeakyRelu", "Relu", "Cast", "Identity"}


class ImportModelError(ModelError):
    """A model folder that cannot become a training checkpoint (one line: the folder and the reason)."""


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes (a Cast of either folded: fp16-stored weights), as float32 arrays."""
    from onnx import numpy_helper

    const = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Cast" and node.input[0] in const:
            const[node.output[0]] = const[node.input[0]].astype(np.float32)
    return {k: np.asarray(v, dtype=np.float32) for k, v in const.items()}


RESCALE_PREFIXES = ("rescale_in/", "rescale_out/")  # export/rescale.py's names for the nodes it adds


def source_graph(path: str | Path, io: dict[str, str] | None = None) -> Any:
    """The ONNX graph at path, with the Resize aekit rescale added (export/rescale.py: the nodes reading or
    writing "rescale_in/*" before an encoder, "rescale_out/*" after a decoder) taken out again: the source
    model's graph, input `io["input"]` and output `io["output"]` as before. A graph without them comes back
    as loaded. Returns an onnx.ModelProto."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    added = [n for n in g.node if any(t.startswith(RESCALE_PREFIXES) for t in (*n.input, *n.output))]
    if not added:
        return model
    io = io or {"input": g.input[0].name, "output": g.output[0].name}
    names = {f"{io['input']}/resampled": io["input"], f"{io['output']}/native": io["output"]}
    keep = [n for n in g.node if n not in added]
    for n in keep:
        n.input[:] = [names.get(t, t) for t in n.input]
        n.output[:] = [names.get(t, t) for t in n.output]
    del g.node[:]
    g.node.extend(keep)
    for t in [t for t in g.initializer if t.name.startswith(RESCALE_PREFIXES)]:
        g.initializer.remove(t)
    return model


def graph_layers(path: str | Path | Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """An exported encoder/decoder/hyper-encoder graph (a path, or an onnx.ModelProto: source_graph's) ->
    its layers in graph order: ("conv" | "conv_transpose" | "gdn", weight float32, bias float32).

    A "gdn" layer is a 1×1 Conv fed by Mul(t, t): weight γ (C, C, 1, 1), bias β (C,) of aekit.layers.GDN.
    Raises ImportModelError for ops outside what the gdn/klt transforms export (e.g. an int8 graph, or a
    rescaled one not passed through source_graph).
    """
    import onnx

    model = onnx.load(str(path)) if isinstance(path, (str, Path)) else path
    const = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    layers: list[tuple[str, np.ndarray, np.ndarray]] = []
    for node in model.graph.node:
        if node.op_type == "Constant" or (node.op_type == "Cast" and node.input[0] in const):
            continue
        if node.op_type not in GRAPH_OPS:
            raise ImportModelError(f"{path}: op {node.op_type} is not part of a gdn/klt transform "
                                   "(an int8 or foreign graph: import a model with fp32 or fp16 networks)")
        if node.op_type not in ("Conv", "ConvTranspose"):
            if node.op_type in ("Mul", "Div") and any(i in const and const[i].size == 1 for i in node.input):
                raise ImportModelError(f"{path}: a scalar {node.op_type} left in the graph (an export without "
                                       "lean folding): not supported")
            continue
        if node.input[1] not in const:
            raise ImportModelError(f"{path}: {node.op_type} {node.name!r} has a computed weight")
        w = const[node.input[1]]
        b = const[node.input[2]] if len(node.input) > 2 and node.input[2] else \
            np.zeros(w.shape[1] if node.op_type == "ConvTranspose" else w.shape[0], np.float32)
        src = producer.get(node.input[0])
        gdn = node.op_type == "Conv" and w.shape[2:] == (1, 1) and w.shape[0] == w.shape[1] and src is not None \
            and src.op_type == "Mul" and src.input[0] == src.input[1]
        layers.append(("gdn" if gdn else "conv" if node.op_type == "Conv" else "conv_transpose", w, b))
    return layers


def _load_sequence(modules: Any, layers: list[tuple[str, np.ndarray, np.ndarray]], what: str) -> None:
    """Copy `layers` (graph_layers) into the Conv2d / ConvTranspose2d / GDN modules of `modules`
    (an nn.Module, visited in module order). Raises ImportModelError on any count or shape mismatch."""
    import torch
    from torch import nn

    from aekit.layers import GDN

    slots = [m for m in modules.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, GDN))]
    if len(slots) != len(layers):
        raise ImportModelError(f"{what}: {len(layers)} layers in the graph, {len(slots)} in the model its "
                               "manifest's model_config builds")
    for i, (m, (kind, w, b)) in enumerate(zip(slots, layers)):
        want = "gdn" if isinstance(m, GDN) else "conv_transpose" if isinstance(m, nn.ConvTranspose2d) else "conv"
        with torch.no_grad():
            if want != kind:
                raise ImportModelError(f"{what}: layer {i} is a {kind} in the graph, a {want} in the model")
            if kind == "gdn":
                c = m.g.shape[0]
                if w.shape != (c, c, 1, 1) or b.shape != (c,):
                    raise ImportModelError(f"{what}: GDN layer {i} has {w.shape[0]} channels, the model {c}")
                m.g.copy_(torch.from_numpy(np.sqrt(np.maximum(w[:, :, 0, 0], 0.0))))
                m.b.copy_(torch.from_numpy(np.sqrt(np.maximum(b - m.beta_min, 0.0))))
            else:
                if tuple(m.weight.shape) != w.shape or m.bias is None or tuple(m.bias.shape) != b.shape:
                    raise ImportModelError(f"{what}: layer {i} weight {w.shape} in the graph, "
                                           f"{tuple(m.weight.shape)} in the model")
                m.weight.copy_(torch.from_numpy(np.array(w)))
                m.bias.copy_(torch.from_numpy(np.array(b)))


def split_gain(net: Any) -> float:
    """Undo the export's fold of the scalar latent gain g (y = g · g_a(x), x̂ = g_s(ŷ / g)) into g_a's last and
    g_s's first layer: choose g so those two layers' weights have equal RMS, and divide it out of both.

    The function is the same for any g; the choice matters to fine-tuning, since Adam's steps do not scale
    with a weight's size: with g = 1 the first layer of g_s (RMS ~5e-4 in photos-r9) took steps ~25× too
    large relative to its weights and lost 0.5 dB of validation PSNR in one epoch at lr 1e-5. Returns g."""
    import torch
    from torch import nn

    last = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)][-1]
    first = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)][0]
    with torch.no_grad():
        rms_e, rms_d = float(last.weight.pow(2).mean().sqrt()), float(first.weight.pow(2).mean().sqrt())
        g = math.sqrt(rms_e / rms_d) if rms_e > 0 and rms_d > 0 else 1.0
        last.weight.div_(g)
        last.bias.div_(g)
        first.weight.mul_(g)
        net.y_gain.fill_(g)
    return g


def _load_hyper_decoder(model: Any, manifest: dict[str, Any], folder: Path) -> None:
    """h_s from the integer hyper decoder: W = W_q / 2^s, b = b_q / 2^(s + F_a)."""
    import torch
    from torch import nn

    from aekit.export.hyperprior import HYPER_FRAC_BITS

    hyper = manifest["entropy"]["hyper"]
    with np.load(folder / Path(hyper["decoder"]).name, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    convs = [m for m in model.hyper_decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if len(convs) != len(hyper["layers"]):
        raise ImportModelError(f"{folder}: {len(hyper['layers'])} hyper decoder layers, the model has {len(convs)}")
    for i, (m, spec) in enumerate(zip(convs, hyper["layers"])):
        s = int(spec["shift"])
        w = arrays[f"w{i}"].astype(np.float64) / 2.0 ** s
        b = arrays[f"b{i}"].astype(np.float64) / 2.0 ** (s + HYPER_FRAC_BITS)
        if tuple(m.weight.shape) != w.shape:
            raise ImportModelError(f"{folder}: hyper decoder layer {i} weight {w.shape}, the model's {tuple(m.weight.shape)}")
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            m.bias.copy_(torch.from_numpy(b.astype(np.float32)))


def fit_prior_to_tables(prior: Any, targets: list[tuple[float, np.ndarray]], steps: int = PRIOR_FIT_STEPS) -> float:
    """Fit a FactorizedPrior to stored integer tables: targets [(step Δ, counts (C, 2·half + 1))].

    Minimises the cross-entropy Σ_Δ Σ_k p_table(k) · −log2 p_model(k) (bins as FactorizedPrior.integer_pmf:
    bin k of width Δ, the end bins take the tails). Returns the mean excess over the tables' own entropy,
    in bits per symbol (the KL divergence; 0 = the tables reproduced)."""
    import torch

    half = (targets[0][1].shape[1] - 1) // 2
    k = torch.arange(-half, half + 2, dtype=torch.float32) - 0.5
    ps = [torch.from_numpy(c / np.maximum(c.sum(1, keepdims=True), 1)).float() for _, c in targets]
    opt = torch.optim.Adam(prior.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    n = k.numel()
    v = torch.cat([k * step for step, _ in targets]).view(1, 1, -1).expand(prior.channels, 1, -1)
    p = torch.cat(ps, 1)  # (C, T·(2·half + 1)): every table side by side, one network pass per step

    def cross_entropy() -> torch.Tensor:
        cdf = torch.sigmoid(prior.logits_cdf(v))[:, 0, :].view(prior.channels, len(targets), n)
        cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf[..., 1:-1], torch.ones_like(cdf[..., :1])], -1)
        q = (cdf[..., 1:] - cdf[..., :-1]).clamp_min(1e-9).reshape(prior.channels, -1)
        return -(p * torch.log2(q)).sum(1).mean() / len(targets)

    for _ in range(steps):
        opt.zero_grad()
        loss = cross_entropy()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        ce = float(cross_entropy())
    entropy = float(np.mean([-(p * torch.log2(p.clamp_min(1e-30))).sum(1).mean() for p in ps]))
    return ce - entropy


def _check_images(channels: int, multiple: int) -> np.ndarray:
    """Two real images (bundled photos) cropped to a multiple of the model's factor: uint8 (2, H, W, C)."""
    import skimage.data

    side = max(multiple, (96 // multiple) * multiple) if multiple <= 96 else multiple
    out = []
    for p in (skimage.data.astronaut(), skimage.data.coffee()):
        p = p[100:100 + side, 150:150 + side]
        out.append(p.mean(axis=2, keepdims=True).round().astype(np.uint8) if channels == 1 else p)
    return np.stack(out)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-6))


def import_model(model: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Exported model folder (or a shipped model's name, resolved by the caller) -> checkpoint `out`
    (aekit.checkpoint format: `aekit train --init-from`, `aekit export`, `aekit refit-hyperprior` take it).

    Returns the checkpoint's "imported" record: source folder and model id, the check's relative errors
    of y and x̂ (and h_s), the prior's excess bits per symbol, the model config and the rate weight at
    which the source's default quality is optimal (source_lambda); for a rescaled model also "rescaled"
    (source name and id, grid scale). Raises ImportModelError (folder: reason)
    for a model it cannot import, a rebuilt model that does not reproduce the graphs, or an existing
    `out` without force; ModelError (aekit.export.manifest) for a folder that is not a model.
    """
    import torch

    from aekit.checkpoint import save_checkpoint
    from aekit.config import ModelConfig
    from aekit.export.entropy import _untrim, rd_counts
    from aekit.models import build_model

    folder = Path(model)
    out = Path(out)
    if out.exists() and not force:
        raise ImportModelError(f"{out}: exists (--force replaces it)")
    m = load_manifest(folder)
    cfg_dict = dict(m.get("model_config") or {})
    arch = cfg_dict.get("arch")
    rescaled = m.get("rescaled") or None
    if rescaled:  # the source transform, run on a grid `scale` times as fine
        try:
            cfg_dict["ratio"], multiple, grid = int(rescaled["from_ratio"]), int(rescaled["from_factor"]), \
                float(rescaled["scale"])
        except (KeyError, TypeError, ValueError):
            raise ImportModelError(f"{folder}: its 'rescaled' record lacks from_ratio, from_factor or scale") from None
    else:
        multiple, grid = int(m["padding"]["multiple"]), 1.0
    if arch not in IMPORT_ARCHS or (m.get("latent") or {}).get("quantiser") != "integer":
        raise ImportModelError(f"{folder}: arch {arch!r}: only rate-distortion models ({', '.join(IMPORT_ARCHS)}) "
                               "can be imported")
    files = m.get("files") or {}
    for part in ("encoder", "decoder"):
        if str(files.get(part, "")).endswith("_int8.onnx"):
            raise ImportModelError(f"{folder}: its {part} ships as int8 only ({files[part]}): int8 weights are not "
                                   "the trained ones; import a model with fp32 or fp16 networks")
    try:
        cfg = ModelConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise ImportModelError(f"{folder}: model_config does not build a model ({e})") from None
    net = build_model(cfg).eval()
    from aekit.export.rescale import graph_io

    io = graph_io(m)
    graphs = {part: source_graph(folder / files[part], io[part]) for part in ("encoder", "decoder")}
    _load_sequence(net.encoder, graph_layers(graphs["encoder"]), f"{folder}/{files['encoder']}")
    _load_sequence(net.decoder, graph_layers(graphs["decoder"]), f"{folder}/{files['decoder']}")
    if hasattr(net, "y_gain"):
        split_gain(net)
    record: dict[str, Any] = {"from": str(folder), "model_id": m.get("model_id"), "arch": arch,
                              "model_config": cfg.to_dict()}
    if rescaled:
        record["rescaled"] = {"from": rescaled.get("from"), "from_model_id": rescaled.get("from_model_id"),
                              "grid_scale": grid, "ratio": int(m["ratio"])}
    half = (int(m["latent"]["levels"]) - 1) // 2
    if cfg.hyperprior:
        hyper = m["entropy"]["hyper"]
        _load_sequence(net.hyper_encoder, graph_layers(folder / Path(hyper["encoder"]).name),
                       f"{folder}/{Path(hyper['encoder']).name}")
        _load_hyper_decoder(net, m, folder)
        targets = [(1.0, _untrim(hyper["tables"], 2 * half + 1))]
    else:
        targets = [(float(q["step"]), rd_counts(m, int(q["quality"]))) for q in m["entropy"]["qualities"]]
    torch.manual_seed(0)
    record["prior_excess_bits"] = round(fit_prior_to_tables(net.entropy, targets), 5)

    # the check: the rebuilt networks against onnxruntime on real images (a rescaled model's source graphs)
    import onnxruntime

    sessions = {part: onnxruntime.InferenceSession(graphs[part].SerializeToString(), providers=["CPUExecutionProvider"])
                for part in graphs}

    def ort(part: str, feed: np.ndarray) -> np.ndarray:
        sess = sessions[part]
        return sess.run(None, {sess.get_inputs()[0].name: feed})[0]

    images = _check_images(cfg.channels, multiple)
    x = (images.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        y_ort = ort("encoder", x)
        y_hat = np.round(y_ort).astype(np.float32)
        y = net.encode(torch.from_numpy(x)).numpy()
        x_hat = net.decode(torch.from_numpy(y_hat)).numpy()
        record["y_error"], record["x_hat_error"] = _relative_error(y, y_ort), _relative_error(x_hat, ort("decoder", y_hat))
        if cfg.hyperprior:
            from aekit.export.hyperprior import HyperpriorEntropyModel

            em = HyperpriorEntropyModel.from_manifest(m)
            q = (np.clip(np.rint(y_ort[0] / em.step), -half, half) + half).astype(np.uint8)
            z_sym = em.hyper_symbols(q)
            acc = np.concatenate([a for _, a in em.decoder.outputs(z_sym, *q.shape[1:])], axis=1)
            mu, log_s = net.gaussian_params(torch.from_numpy(z_sym[None].astype(np.float32) - half), *q.shape[1:])
            record["h_s_error"] = _relative_error(torch.cat([mu, log_s], 1)[0].numpy(), acc / 2.0 ** em.decoder.frac_bits)
    worst = max(v for k, v in record.items() if k.endswith("_error"))
    if not math.isfinite(worst) or worst > IMPORT_TOLERANCE:
        raise ImportModelError(f"{folder}: the rebuilt model does not reproduce the exported graphs "
                               f"(relative error {worst:.2e} > {IMPORT_TOLERANCE:g}): {record}")
    for k in [k for k in record if k.endswith("_error")]:
        record[k] = float(f"{record[k]:.3g}")
    lam = source_lambda(m)
    record["rate_weight"] = None if lam is None else float(f"{lam:.3g}")
    training = dict(m.get("training") or {})
    train_config: dict[str, Any] = {} if lam is None else {"rate_weight": record["rate_weight"]}
    summary: dict[str, Any] = {**training, "imported": record}
    if rescaled:  # aekit train --init-from, refit-hyperprior and fit-context read the grid from here
        train_config["grid_scale"] = summary["grid_scale"] = grid
    save_checkpoint(out, {"model_config": cfg.to_dict(), "state_dict": net.state_dict(),
                          # 0-based, as aekit train saves it (the summary's best_epoch counts from 1)
                          "epoch": max(0, int(training.get("best_epoch") or training.get("epochs") or 1) - 1),
                          "history": [], "summary": summary, "latent_hist": [],
                          # an export of this checkpoint chooses its default quality at this λ (export/onnx.py)
                          "train_config": train_config})
    return record


TRAIN_FLAGS = {"arch": "--arch", "channels": "--channels", "ratio": "--ratio", "width": "--width",
               "encoder_width": "--encoder-width", "hyper_width": "--hyper-width", "res_blocks": "--res-blocks",
               "down_factor": "--factor", "blocks": "--blocks", "upsample": "--upsample",
               "latent_levels": "--latent-levels", "quant": "--quant", "backbone": "--backbone"}
ALWAYS_FLAGS = ("arch", "channels", "ratio", "width")


def train_flags(model_config: dict[str, Any]) -> str:
    """`aekit train` options that build this model config (what `--init-from` requires to match): arch,
    channels, ratio and width always, the other fields where they differ from the defaults."""
    from aekit.config import ModelConfig

    default = ModelConfig().to_dict()
    return " ".join(f"{flag} {model_config[k]}" for k, flag in TRAIN_FLAGS.items()
                    if k in model_config and (k in ALWAYS_FLAGS or model_config[k] != default.get(k)))


def source_lambda(m: dict[str, Any]) -> float | None:
    """The rate weight λ at which the model's default quality minimises D + λ·R on its export's own check
    (each quality's "check": mean PSNR and bpp on real crops; D = 4 · 10^(−PSNR/10), the MSE on [−1, 1] that
    training minimises), by aekit.export.rescale.implied_lambda; None without those figures. A rescaled
    model's is the one its rescale recorded for the source's default (rescaled.default_quality.lambda)."""
    from aekit.export.rescale import implied_lambda

    dq = (m.get("rescaled") or {}).get("default_quality")
    if isinstance(dq, dict) and isinstance(dq.get("lambda"), (int, float)):
        return float(dq["lambda"])

    ent = m.get("entropy") or {}
    points = {int(q["quality"]): (4 * 10 ** (-float(q["check"]["psnr"]) / 10), float(q["check"]["bpp"]))
              for q in ent.get("qualities", []) if isinstance(q.get("check"), dict)}
    default = ent.get("default_quality")
    return implied_lambda(points, int(default)) if default in points else None
