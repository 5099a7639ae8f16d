"""Lean ONNX graphs: exact algebraic rewrites applied at export, before the parity check.

    counts = lean_file("decoder.onnx")   # rewrites in place, returns {"pass": rewrites}
Each pass keeps the function (up to float rounding, checked < 1e-4 against PyTorch by the
export) and removes work onnxruntime's own optimiser leaves in the graph: BatchNorm after a
pixel shuffle folded into the conv before it, activations moved before DepthToSpace (so the
CPU provider fuses them into the conv), scalar pre-scales folded into weights, and strided
ConvTranspose rewritten as a sub-pixel Conv + DepthToSpace (Shi et al. 2016's equivalence;
opt-in, see DEFAULT_PASSES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# activations that commute with DepthToSpace (element-wise, the same function on every channel)
ELEMENTWISE_ACTS = ("LeakyRelu", "Relu", "Tanh", "Sigmoid", "Elu", "HardSigmoid", "Clip")
PASSES = ("fold_constants", "fold_scalar_scale", "fold_bn", "fold_bn_through_d2s", "act_before_d2s",
          "convtranspose_to_subpixel")
# The sub-pixel rewrite is opt-in (lean_file(path, PASSES)): measured on the gdn photo decoders it
# is level with onnxruntime's ConvTranspose (0.97-1.11x, within the run's noise) for 1.43x the
# multiply-adds and extra DepthToSpace/reorder glue (bench/RESULTS.md, "Lean graphs and int8").
# int8 exports use it (export/onnx.py): quantised, only the Conv form runs on int8 kernels.
DEFAULT_PASSES = tuple(p for p in PASSES if p != "convtranspose_to_subpixel")


class _Graph:
    """Producer/consumer bookkeeping over an onnx GraphProto's nodes and initializers."""

    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model, self.g = model, model.graph
        self.init = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}

    def producer(self, name: str) -> Any:
        return next((n for n in self.g.node if name in n.output), None)

    def consumers(self, name: str) -> list[Any]:
        return [n for n in self.g.node if name in n.input]

    def sole_use(self, name: str) -> bool:
        """Tensor `name` feeds exactly one node and is not a graph output."""
        return name not in self.outputs and len(self.consumers(name)) == 1

    def const(self, name: str) -> np.ndarray | None:
        return self.init.get(name)

    def set_const(self, hint: str, value: np.ndarray) -> str:
        """Add an initializer under a fresh name (originals may be shared); returns the name."""
        from onnx import numpy_helper

        name, i = f"{hint}_lean", 0
        while name in self.init:
            i += 1
            name = f"{hint}_lean{i}"
        self.init[name] = value
        self.g.initializer.append(numpy_helper.from_array(value, name))
        return name

    def remove(self, node: Any) -> None:
        self.g.node.remove(node)

    def prune(self) -> None:
        """Drop initializers no node reads (the replaced weights)."""
        used = {i for n in self.g.node for i in n.input} | self.outputs
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        self.init = {k: v for k, v in self.init.items() if k in used}


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    if a is None:
        return default
    v = helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def _bn_affine(g: _Graph, bn: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Inference BatchNormalization as y = s·x + t per channel, when all its statistics are constants."""
    vals = [g.const(i) for i in bn.input[1:5]]
    if len(bn.output) != 1 or any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
    s = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    return s, beta - mean * s


def _weights(g: _Graph, conv: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) of a Conv/ConvTranspose with constant weights (b zeros when absent), float64."""
    w = g.const(conv.input[1])
    if w is None or (len(conv.input) > 2 and conv.input[2] and g.const(conv.input[2]) is None):
        return None
    cout = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * _attr(conv, "group", 1)
    b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(cout)
    return w.astype(np.float64), b.astype(np.float64)


def _set_weights(g: _Graph, conv: Any, w: np.ndarray, b: np.ndarray) -> None:
    conv.input[1] = g.set_const(conv.input[1], w.astype(np.float32))
    bias = g.set_const(conv.input[1].removesuffix("_lean") + "_bias", b.astype(np.float32))
    if len(conv.input) > 2:
        conv.input[2] = bias
    else:
        conv.input.append(bias)


def fold_bn(g: _Graph) -> int:
    """Conv/ConvTranspose (group 1 for ConvTranspose) -> BatchNormalization: scale W, shift b."""
    for bn in [x for x in g.g.node if x.op_type == "BatchNormalization"]:
        conv, aff = g.producer(bn.input[0]), _bn_affine(g, bn)
        if conv is None or aff is None or conv.op_type not in ("Conv", "ConvTranspose") or not g.sole_use(bn.input[0]):
            continue
        wb = _weights(g, conv)
        if wb is None or (conv.op_type == "ConvTranspose" and _attr(conv, "group", 1) != 1):
            continue
        (w, b), (s, t) = wb, aff
        w = w * (s[:, None, None, None] if conv.op_type == "Conv" else s[None, :, None, None])
        _set_weights(g, conv, w, b * s + t)
        conv.output[0] = bn.output[0]
        g.remove(bn)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


def fold_bn_through_d2s(g: _Graph) -> int:
    """Conv -> DepthToSpace(r) -> BatchNormalization: BN channel c scales conv channels c·r²+k (CRD)."""
    for bn in [x for x in g.g.node if x.op_type == "BatchNormalization"]:
        d2s, aff = g.producer(bn.input[0]), _bn_affine(g, bn)
        if d2s is None or aff is None or d2s.op_type != "DepthToSpace" or not g.sole_use(bn.input[0]):
            continue
        conv = g.producer(d2s.input[0])
        if conv is None or conv.op_type != "Conv" or not g.sole_use(d2s.input[0]) or _weights(g, conv) is None:
            continue
        (w, b), (s, t), r2 = _weights(g, conv), aff, _attr(d2s, "blocksize") ** 2
        # CRD: input channel c*r*r + k -> output channel c; DCR: k*C + c -> c
        rep = (np.repeat if _attr(d2s, "mode", "DCR") == "CRD" else np.tile)
        s_, t_ = rep(s, r2), rep(t, r2)
        _set_weights(g, conv, w * s_[:, None, None, None], b * s_ + t_)
        d2s.output[0] = bn.output[0]
        g.remove(bn)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


def act_before_d2s(g: _Graph) -> int:
    """DepthToSpace -> element-wise activation becomes activation -> DepthToSpace (fusable with the conv)."""
    for act in [x for x in g.g.node if x.op_type in ELEMENTWISE_ACTS]:
        d2s = g.producer(act.input[0])
        if d2s is None or d2s.op_type != "DepthToSpace" or not g.sole_use(act.input[0]):
            continue
        x, mid, out = d2s.input[0], act.input[0], act.output[0]
        act.input[0], act.output[0] = x, mid  # act now reads the conv output
        d2s.input[0], d2s.output[0] = mid, out
        from onnx import NodeProto

        i, j = list(g.g.node).index(d2s), list(g.g.node).index(act)  # keep topological order: act first
        tmp = NodeProto()
        tmp.CopyFrom(g.g.node[i])
        g.g.node[i].CopyFrom(g.g.node[j])
        g.g.node[j].CopyFrom(tmp)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


def fold_scalar_scale(g: _Graph) -> int:
    """Mul/Div by a constant scalar right after a Conv (fold into its W and b) or right before one (into W)."""
    for op in [x for x in g.g.node if x.op_type in ("Div", "Mul")]:
        c = g.const(op.input[1])
        if c is None or c.size != 1:
            continue
        k = float(c.reshape(()))
        pre = g.producer(op.input[0])  # Conv -> scale: W·k, b·k (the gdn encoder's latent gain)
        if pre is not None and pre.op_type in ("Conv", "ConvTranspose") and g.sole_use(op.input[0]) and _weights(g, pre):
            w, b = _weights(g, pre)
            k = 1 / k if op.op_type == "Div" else k
            _set_weights(g, pre, w * k, b * k)
            pre.output[0] = op.output[0]
            g.remove(op)
            return 1
        if not g.sole_use(op.output[0]):
            continue
        conv = g.consumers(op.output[0])[0]
        if conv.op_type not in ("Conv", "ConvTranspose") or conv.input[0] != op.output[0] or _weights(g, conv) is None:
            continue
        w, b = _weights(g, conv)
        _set_weights(g, conv, w / k if op.op_type == "Div" else w * k, b)
        conv.input[0] = op.input[0]
        g.remove(op)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


_FOLDABLE = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide, "Sqrt": np.sqrt,
             "Reshape": lambda x, s: x.reshape(s)}


def fold_constants(g: _Graph) -> int:
    """Nodes whose inputs are all initializers (e.g. GDN's γ = g², reshaped) become initializers."""
    for node in list(g.g.node):
        if node.op_type not in _FOLDABLE or len(node.output) != 1 or node.output[0] in g.outputs:
            continue
        args = [g.const(i) for i in node.input]
        if any(a is None for a in args) or (node.op_type == "Reshape" and 0 in args[1] and _attr(node, "allowzero", 0) == 0):
            continue
        value = np.asarray(_FOLDABLE[node.op_type](*args)).astype(args[0].dtype)
        name = node.output[0]
        from onnx import numpy_helper

        g.init[name] = value
        g.g.initializer.append(numpy_helper.from_array(value, name))
        g.remove(node)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


def convtranspose_to_subpixel(g: _Graph) -> int:
    """ConvTranspose(k, stride s, group 1) whose output is exactly s·H x s·W -> Conv to C·s² channels + DepthToSpace(CRD).

    Output pixel o = s·m + r gathers x[m - d]·W[s·d + r + p_begin] over d: per phase r a correlation,
    all phases one conv of kernel (d_max - d_min + 1) with pads (d_max, -d_min). Same terms, so the
    result differs only by summation order; onnxruntime's CPU convolutions are much faster than its
    ConvTranspose (col2im).
    """
    from onnx import helper

    for ct in [x for x in g.g.node if x.op_type == "ConvTranspose"]:
        wb = _weights(g, ct)
        strides = list(_attr(ct, "strides", [1, 1]))
        if (wb is None or wb[0].ndim != 4 or _attr(ct, "group", 1) != 1 or _attr(ct, "auto_pad", "NOTSET") != "NOTSET"
                or _attr(ct, "output_shape") is not None or any(d != 1 for d in _attr(ct, "dilations", [1, 1]))
                or len(set(strides)) != 1 or strides[0] < 2):
            continue
        (w, b), s = wb, strides[0]
        ci, co, kh, kw = w.shape
        pads = list(_attr(ct, "pads", [0, 0, 0, 0]))
        opad = list(_attr(ct, "output_padding", [0, 0]))
        geo = []
        for ax, k in enumerate((kh, kw)):
            pb, pe = pads[ax], pads[ax + 2]
            if k - s - pb - pe + opad[ax] != 0:  # output is not exactly s times the input
                break
            ds = [d for r in range(s) for d in range(-k, k + 1) if 0 <= s * d + r + pb < k]
            if min(ds) > 0 or max(ds) < 0:
                break
            geo.append((pb, min(ds), max(ds)))
        if len(geo) != 2:
            continue
        (pby, dminy, dmaxy), (pbx, dminx, dmaxx) = geo
        wc = np.zeros((co * s * s, ci, dmaxy - dminy + 1, dmaxx - dminx + 1))
        for ry in range(s):
            for rx in range(s):
                for uy in range(wc.shape[2]):
                    for ux in range(wc.shape[3]):
                        ky, kx = s * (dmaxy - uy) + ry + pby, s * (dmaxx - ux) + rx + pbx
                        if 0 <= ky < kh and 0 <= kx < kw:
                            wc[ry * s + rx::s * s, :, uy, ux] = w[:, :, ky, kx].T  # CRD: channel c·s² + ry·s + rx
        mid = f"{ct.output[0]}_subpixel"
        conv = helper.make_node("Conv", [ct.input[0], g.set_const(ct.input[1], wc.astype(np.float32)),
                                         g.set_const(ct.input[1] + "_bias", np.repeat(b, s * s).astype(np.float32))],
                                [mid], kernel_shape=list(wc.shape[2:]), pads=[dmaxy, dmaxx, -dminy, -dminx],
                                strides=[1, 1], group=1, name=f"{ct.name or ct.output[0]}_subpixel_conv")
        d2s = helper.make_node("DepthToSpace", [mid], [ct.output[0]], blocksize=s, mode="CRD",
                               name=f"{ct.name or ct.output[0]}_subpixel_d2s")
        i = list(g.g.node).index(ct)
        g.remove(ct)
        g.g.node.insert(i, d2s)
        g.g.node.insert(i, conv)
        return 1  # one rewrite per call: node references are stale after an edit
    return 0


def lean_model(model: Any, passes: tuple[str, ...] = DEFAULT_PASSES) -> dict[str, int]:
    """Apply the passes (in PASSES order) to an onnx ModelProto in place until none rewrites; {pass: count}."""
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown lean-graph pass {', '.join(unknown)} (have: {', '.join(PASSES)})")
    g, counts = _Graph(model), {p: 0 for p in passes}
    fns = {p: globals()[p] for p in passes}
    changed = True
    while changed:
        changed = False
        for p in PASSES:
            if p in fns and (k := fns[p](g)):
                counts[p] += k
                changed = True
    g.prune()
    del g.g.value_info[:]  # stale shapes of rewritten tensors; onnx shape inference recomputes them
    return {p: k for p, k in counts.items() if k}


def lean_file(path: str | Path, passes: tuple[str, ...] = DEFAULT_PASSES) -> dict[str, int]:
    """Rewrite an ONNX file in place with `lean_model` and check it (onnx.checker, full); {pass: count}."""
    import onnx

    model = onnx.load(str(path))
    counts = lean_model(model, passes)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return counts
