"""The model manifest: manifest.json beside encoder.onnx and decoder.onnx (no torch).

It names the model (id = hash of both ONNX files), says how to feed it (channels,
factor, padding, normalisation, latent quantisation) and carries what later stages
add (latent symbol histogram for the entropy coder, detector calibration).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from aekit import zoo
from aekit.images import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "aekit-model"
MANIFEST_VERSION = 1  # a manifest that holds all its tables
SHARED_TABLES_VERSION = 2  # a manifest that names a shared table set (SHARED_TABLES) instead of holding it
# Table sets that many models share, shipped once with the runtime (package data beside this file): a
# manifest may name one instead of holding it, as entropy.scale_tables = {"shared": NAME, "sha256": HEX};
# load_manifest puts the tables back, so the model id (which hashes the full tables) and everything
# downstream see the same manifest either way. gaussian-v1: the hyperprior's 256 Gaussian tables
# (aekit.entropy_models.gaussian_pmf, trimmed), 337 KB of JSON in each gdn-hp manifest otherwise.
SHARED_TABLES = {"gaussian-v1": "gaussian_scale_tables_v1.json.gz"}
MAX_MANIFEST_BYTES = 64 << 20  # larger manifest files are refused before they are read
REQUIRED_KEYS = ("model_id", "channels", "ratio", "factor", "latent_channels", "latent", "files")
SUPERSEDES_KEY = "supersedes"  # ids of the models this one extends (aekit add-quality), whose files it decodes
MAX_SUPERSEDES = 64  # longer lists are refused (each entry is verified by hashing)


class ModelError(Exception):
    """A model folder that is missing, incomplete, foreign or of an unknown version."""


def model_id_of(encoder: Path, decoder: Path, extra: bytes = b"") -> str:
    """First 16 hex digits of SHA-256 over encoder bytes, decoder bytes, then `extra`.

    extra is entropy_bytes(manifest): empty for tanh-latent models (their ids are unchanged
    since format 1), the canonical JSON of the quantiser and entropy tables for rate-distortion
    models, so a file's model id pins the tables it was coded with too.
    """
    h = hashlib.sha256()
    for p in (encoder, decoder):
        h.update(Path(p).read_bytes())
    h.update(extra)
    return h.hexdigest()[:16]


def entropy_bytes(m: dict[str, Any]) -> bytes:
    """Canonical bytes of a rate-distortion model's latent + entropy fields (b"" for tanh models)."""
    if not isinstance(m.get("latent"), dict) or m["latent"].get("quantiser") != "integer":
        return b""
    return json.dumps({"latent": m["latent"], "entropy": m.get("entropy")}, sort_keys=True,
                      separators=(",", ":")).encode()


def load_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Read and check model_dir/manifest.json (model_dir may also be the manifest itself)."""
    d = Path(model_dir)
    path = d if d.is_file() else d / MANIFEST_NAME
    if not path.is_file():
        what = f"not an aekit model folder (no {MANIFEST_NAME})" if d.exists() else "no such model or folder"
        raise ModelError(f"{d}: {what}; export one with `aekit export`"
                         f" or name a shipped model ({', '.join(zoo.names()) or 'none installed'}: `aekit models`)")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{path}: {size} bytes is not a plausible manifest (limit {MAX_MANIFEST_BYTES})")
        m = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{path}: not an aekit model manifest")
    if m.get("format_version") not in (MANIFEST_VERSION, SHARED_TABLES_VERSION):
        raise ModelError(f"{path}: manifest version {m.get('format_version')} unsupported "
                         f"(expected {MANIFEST_VERSION} or {SHARED_TABLES_VERSION})")
    _expand_shared_tables(m, path)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise ModelError(f"{path}: manifest lacks {', '.join(missing)}")
    _check_values(m, path)
    for key in ("encoder", "decoder"):
        if not (path.parent / m["files"][key]).is_file():
            raise ModelError(f"{path.parent}: {m['files'][key]} named by the manifest is missing")
    computed = _verified_id(path.parent / m["files"]["encoder"], path.parent / m["files"]["decoder"], entropy_bytes(m))
    if computed != m["model_id"]:
        raise ModelError(f"{path}: model_id {m['model_id']} does not match its files (they hash to {computed}): "
                         "the ONNX files or entropy tables were changed or swapped; re-export the model")
    _check_supersedes(m, path)
    m["_dir"] = str(path.parent.resolve())
    return m


def superseded_view(m: dict[str, Any], n: int, model_id: str) -> dict[str, Any]:
    """The manifest m had with only its first n qualities, under model_id (a shallow copy): the model
    `aekit add-quality` extended into m. Its tables and networks are m's, so it decodes that model's files."""
    ent = m["entropy"]
    return {**m, "model_id": model_id, "entropy": {**ent, "qualities": ent["qualities"][:n]}}


def _check_supersedes(m: dict[str, Any], path: Path) -> None:
    """m["supersedes"] (written by aekit add-quality): [{"model_id": ID, "qualities": n}, ...], each the id that
    m's files and first n qualities hash to. Verified here like the model id itself, so a folder decodes an
    older id's files only where it holds that model exactly; ModelError otherwise."""
    sup = m.get(SUPERSEDES_KEY)
    if sup is None:
        return
    qualities = (m.get("entropy") or {}).get("qualities") if isinstance(m.get("entropy"), dict) else None
    if not isinstance(sup, list) or not isinstance(qualities, list):
        raise ModelError(f"{path}: {SUPERSEDES_KEY} needs a list and a model with quality tables")
    if len(sup) > MAX_SUPERSEDES:  # each entry hashes the entropy JSON once more
        raise ModelError(f"{path}: {SUPERSEDES_KEY} lists {len(sup)} models (at most {MAX_SUPERSEDES})")
    default = m["entropy"].get("default_quality")
    for e in sup:
        n = e.get("qualities") if isinstance(e, dict) else None
        mid = e.get("model_id") if isinstance(e, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < len(qualities) or not isinstance(mid, str):
            raise ModelError(f"{path}: {SUPERSEDES_KEY} entry {e!r} is not a model id and a quality count "
                             f"below {len(qualities)}")
        view = superseded_view(m, n, mid)
        if not (isinstance(default, int) and default <= n) or _verified_id(
                path.parent / m["files"]["encoder"], path.parent / m["files"]["decoder"], entropy_bytes(view)) != mid:
            raise ModelError(f"{path}: {SUPERSEDES_KEY} names model {mid}, which this folder's files and first {n} "
                             "qualities are not (changed or copied from another model); re-run aekit add-quality")


def _check_values(m: dict[str, Any], path: Path) -> None:
    """Types and ranges of the fields every reader relies on; ModelError naming the field."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{path}: {what}")

    def integer(key: str, lo: int, hi: int, v: Any = None) -> int:
        v = m.get(key) if v is None else v
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(f"{key} = {v!r} is not an integer in {lo}..{hi}")
        return v

    if not isinstance(m["model_id"], str) or len(m["model_id"]) != 16 or any(c not in "0123456789abcdef" for c in m["model_id"]):
        raise bad(f"model_id {m['model_id']!r} is not 16 hex digits")
    if m.get("channels") not in (1, 3):
        raise bad(f"channels = {m.get('channels')!r}, expected 1 or 3")
    f, cy = integer("factor", 1, 64), integer("latent_channels", 1, 4096)
    integer("ratio", 1, 64)
    lat = m["latent"]
    if not isinstance(lat, dict):
        raise bad("latent is not an object")
    levels = integer("latent.levels", 2, 256, lat.get("levels"))
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(files.get(k), str) for k in ("encoder", "decoder")):
        raise bad("files must name the encoder and decoder ONNX files")
    for k, name in files.items():  # plain names inside the model folder: never a path elsewhere
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise bad(f"files.{k} = {name!r} is not a file name inside the model folder")
    hist = m.get("latent_hist")
    if hist and (not isinstance(hist, list) or len(hist) != cy or any(not isinstance(r, list) or len(r) != levels for r in hist)):
        raise bad(f"latent_hist is not {cy} rows of {levels} counts")
    if f * f * m["channels"] != m["ratio"] * cy:
        raise bad(f"factor {f}, channels {m['channels']} and {cy} latent channels do not give ratio {m['ratio']}")


_ID_CACHE: dict[tuple, str] = {}  # (files' path, size, mtime) + entropy bytes -> id: hash each model once
_FILES_HASH: dict[tuple, Any] = {}  # (files' path, size, mtime) -> SHA-256 state after both ONNX files


def _verified_id(encoder: Path, decoder: Path, extra: bytes) -> str:
    """model_id_of(encoder, decoder, extra), the ONNX files read and hashed once per process (a folder's
    superseded ids hash the same files with other entropy bytes)."""
    files = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (encoder, decoder))
    key = files + (hashlib.sha256(extra).digest(),)
    if key not in _ID_CACHE:
        if files not in _FILES_HASH:
            h = hashlib.sha256()
            for p in (encoder, decoder):
                h.update(Path(p).read_bytes())
            _FILES_HASH[files] = h
        h = _FILES_HASH[files].copy()
        h.update(extra)
        _ID_CACHE[key] = h.hexdigest()[:16]
    return _ID_CACHE[key]


@functools.lru_cache(maxsize=None)
def shared_tables(name: str) -> tuple[str, list[Any]]:
    """(sha256 of its canonical JSON, the tables) of a SHARED_TABLES set, read once per process.
    The list is shared by every manifest that names the set: read it, never change it."""
    data = gzip.decompress((Path(__file__).parent / SHARED_TABLES[name]).read_bytes())
    return hashlib.sha256(data).hexdigest(), json.loads(data)


def _expand_shared_tables(m: dict[str, Any], path: Path) -> None:
    """Replace a {"shared": NAME, "sha256": HEX} entropy.scale_tables by the named tables (in place);
    ModelError for a set this aekit does not have or whose hash differs."""
    ent = m.get("entropy")
    ref = ent.get("scale_tables") if isinstance(ent, dict) else None
    if not isinstance(ref, dict):
        return
    name = ref.get("shared")
    if not isinstance(name, str) or not isinstance(ref.get("sha256"), str):
        raise ModelError(f"{path}: entropy.scale_tables names shared tables without a 'shared' name and 'sha256'")
    if name not in SHARED_TABLES:
        raise ModelError(f"{path}: entropy.scale_tables names the shared table set {name!r}, which this aekit "
                         f"does not have (it has {', '.join(SHARED_TABLES)})")
    sha, tables = shared_tables(name)
    if ref.get("sha256") != sha:
        raise ModelError(f"{path}: entropy.scale_tables expects shared tables {name} with sha256 "
                         f"{str(ref.get('sha256'))[:16]}…, this aekit's hash to {sha[:16]}…")
    ent["scale_tables"] = tables


def _share_tables(m: dict[str, Any]) -> dict[str, Any]:
    """m with entropy.scale_tables replaced by a reference where they equal a shared set (a shallow copy;
    format_version SHARED_TABLES_VERSION), else m itself."""
    ent = m.get("entropy")
    tables = ent.get("scale_tables") if isinstance(ent, dict) else None
    if not isinstance(tables, list):
        return m
    canonical = json.dumps(tables, separators=(",", ":")).encode()
    for name in SHARED_TABLES:
        sha, _ = shared_tables(name)
        if hashlib.sha256(canonical).hexdigest() == sha:
            return {**m, "format_version": SHARED_TABLES_VERSION,
                    "entropy": {**ent, "scale_tables": {"shared": name, "sha256": sha}}}
    return m


def save_manifest(model_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically (keys starting with '_' are not stored), as compact JSON: an RD
    model's tables are most of it, and indenting them made the file 1.8x larger (`aekit info --json`
    prints it indented). Tables equal to a SHARED_TABLES set are written as a reference to it."""
    clean = {k: v for k, v in _share_tables(manifest).items() if not k.startswith("_")}
    return atomic_write_bytes(Path(model_dir) / MANIFEST_NAME, (json.dumps(clean, separators=(",", ":")) + "\n").encode())


def resolve_model(name_or_path: str | Path) -> Path:
    """A model argument -> its folder: an existing path as given, else a shipped (zoo) model's name.

    Every CLI resolves -m/MODEL through this (`model_arg`), so `-m photos-r4` works wherever a
    folder does; a path that exists wins over a zoo name. Unknown names come back unchanged, so
    the caller's usual error (load_manifest's, which lists the shipped models) reports them.
    """
    p = Path(name_or_path)
    return p if p.exists() else (zoo.path(str(name_or_path)) or p)


def model_arg(value: str) -> str:
    """argparse `type=` of every model argument: resolve_model, as a string."""
    return str(resolve_model(value))


def find_model(model_id: str, search: list[str | Path]) -> Path:
    """The model folder with this id: each search path is a model folder or a folder of them.

    The shipped models (aekit/zoo) are searched after `search`, so files written with a zoo model
    decode anywhere without flags. A folder whose manifest supersedes the id (aekit add-quality: the
    same networks and tables with more qualities) is taken when no folder has the id itself;
    load_model_as gives its manifest as that model's.
    """
    seen, bad, extends = [], [], None  # ids of the models found; why folders were skipped; a superseding folder
    search = [*search, zoo.ZOO_DIR]
    for root in map(Path, search):
        candidates = [root] if (root / MANIFEST_NAME).is_file() else sorted(
            p.parent for p in root.glob(f"*/{MANIFEST_NAME}")
        ) if root.is_dir() else []
        for c in candidates:
            try:
                m = load_manifest(c)
            except ModelError as e:
                bad.append(str(e))
                continue
            if m["model_id"] == model_id:
                return c
            if extends is None and any(e["model_id"] == model_id for e in m.get(SUPERSEDES_KEY) or []):
                extends = c
            seen.append(m["model_id"])
    if extends is not None:
        return extends
    where = ", ".join(map(str, search[:-1])) + (", " if len(search) > 1 else "") + "the shipped models"
    have = ", ".join(seen) if seen else "none"
    skipped = f"; skipped {len(bad)} unusable model folder(s): {bad[0]}" if bad else ""
    raise ModelError(f"model {model_id} not found in {where} (have: {have}){skipped}")


def load_model_as(folder: str | Path, model_id: str) -> dict[str, Any]:
    """load_manifest(folder) as the manifest of model_id: the folder's own, or the view of a model it supersedes
    (its first n qualities). ModelError when the folder is neither."""
    m = load_manifest(folder)
    if m["model_id"] == model_id:
        return m
    for e in m.get(SUPERSEDES_KEY) or []:
        if e["model_id"] == model_id:
            return superseded_view(m, e["qualities"], model_id)
    raise ModelError(f"{folder}: holds model {m['model_id']}, not {model_id}")


def _num(x: Any) -> str:
    """A threshold for display: None/absent means infinite (too few images to flag anything)."""
    return "inf" if x is None else f"{x:.4g}"


def _describe_latent(m: dict[str, Any]) -> str:
    lat = m["latent"]
    if lat.get("quantiser") != "integer":
        return (f"latent       tanh in [{lat['range'][0]}, {lat['range'][1]}], {lat['levels']} levels "
                f"-> {lat['dtype']} symbols; histogram: {'yes' if m.get('latent_hist') else 'no'}")
    ent = m.get("entropy") or {}
    qs = ", ".join(f"{q['quality']} (step {q['step']:g})" for q in ent.get("qualities", []))
    hyper = ent.get("hyper")
    coder = (f"scale hyperprior: 64 Gaussian tables, z ({hyper.get('channels')} ch at 1/{hyper.get('factor')} of y) "
             f"under the factorized prior, integer h_s (index agreement {hyper.get('index_agreement')})"
             if isinstance(hyper, dict) else "factorized prior tables per quality")
    sup = "".join(f"\nsupersedes   model {e['model_id']} (its qualities 1..{e['qualities']}; aekit add-quality): "
                  "its files decode with this folder" for e in m.get(SUPERSEDES_KEY) or [])
    return (f"latent       integer, {lat['quantise']}; {coder}\n"
            f"qualities    {qs}; default {ent.get('default_quality')} (--quality; higher = better, larger){sup}")


def _fp32_layers(int8: dict[str, Any]) -> str:
    """'; the encoder's output layer NAME kept in fp32' (or '; the encoder's output y in uint16', '; the
    decoder's input y_hat in uint16') for an int8 section whose networks needed it (aekit add-int8)."""
    nodes, wide = int8.get("encoder_fp32_nodes"), int8.get("encoder_uint16_tensors")
    dwide = int8.get("decoder_uint16_tensors")
    return ((f"; the encoder's output layer {', '.join(nodes)} kept in fp32" if nodes else "")
            + (f"; the encoder's output {', '.join(wide)} in uint16" if wide else "")
            + (f"; the decoder's input {', '.join(dwide)} in uint16" if dwide else ""))


def _card(m: dict[str, Any]) -> dict[str, Any]:
    """The model card (card.json) beside a manifest, or {} (only zoo models have one)."""
    try:
        card = json.loads((Path(m["_dir"]) / "card.json").read_text()) if m.get("_dir") else {}
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _describe_speed(m: dict[str, Any]) -> list[str]:
    """`aekit info` lines for the optional "graph", "speed" and "int8" sections. A shipped model's
    card.json supplies "speed" when it has one: the card's is re-measured on a quiet machine (as
    `aekit models show` prints it), the manifest's at export time, whatever ran beside it."""
    lines, sp = [], _card(m).get("speed")
    if not isinstance(sp, dict) or not isinstance(sp.get("gflop_per_mp"), dict):
        sp = m.get("speed")
    if isinstance(sp, dict) and isinstance(sp.get("gflop_per_mp"), dict):
        g, r = sp["gflop_per_mp"], sp.get("mp_per_s") or {}
        on = sp.get("measured_on") or {}
        lines.append(f"compute      encoder {g.get('encoder')} GFLOP/MP, decoder {g.get('decoder')} GFLOP/MP"
                     + (f"; measured {r.get('encoder')} / {r.get('decoder')} MP/s (encode / decode, "
                        f"{on.get('threads', 1)} thread, {sp.get('side')} px, {on.get('cpu', '?')})" if r else ""))
    lean = (m.get("graph") or {}).get("lean") if isinstance(m.get("graph"), dict) else None
    if isinstance(lean, dict):
        done = sorted({p for v in lean.values() if isinstance(v, dict) for p in v})
        lines.append(f"graph        lean: {', '.join(done) or 'nothing to rewrite'}")
    q = m.get("int8")
    if isinstance(q, dict):
        lines.append(f"int8         {' + '.join(q.get('parts', []))}: {q.get('psnr_loss_db')} dB PSNR lost vs fp32 on "
                     f"{q.get('check_images')} held-out images (limit {q.get('max_loss_db')}), speed-up "
                     + ", ".join(f"{k} {v}x" for k, v in (q.get("speedup") or {}).items())
                     + ("; encoder int8: symbols may differ between machines" if "encoder" in q.get("parts", []) else "")
                     + _fp32_layers(q))
    v = m.get("int8_variants")
    if isinstance(v, dict):
        enc = "encoder" in v.get("parts", [])
        lines.append(f"int8 variant {' + '.join(v.get('parts', []))} (aekit {'compress/' if enc else ''}decompress --int8): "
                     f"{v.get('psnr_loss_db')} dB PSNR lost vs fp32 on {v.get('check_images')} held-out images (limit "
                     f"{v.get('max_loss_db')}), speed-up " + ", ".join(f"{k} {x}x" for k, x in (v.get("speedup") or {}).items())
                     + _fp32_layers(v))
    st = m.get("storage")
    if isinstance(st, dict):
        which = "the fp32 fallbacks and h_a" if isinstance(m.get("int8"), dict) else "the networks"
        lines.append(f"weights      {which} stored as {st.get('weights')} (computed in fp32); images coded with them: "
                     f"{st.get('decoded_psnr_vs_fp32_db')} dB PSNR against the fp32 networks (limit {st.get('min_psnr_db')})")
    return lines


def _data_shown(data: str | None) -> tuple[str, str]:
    """The training folder as `aekit info` shows it, and a note: as recorded when it is on this machine, else its
    last three parts (the trainer's absolute path means nothing here) and a note saying so."""
    if not data or Path(data).is_dir():
        return str(data), ""
    return str(Path(*Path(data).parts[-3:])), "; the trainer's folder, not on this machine"


def describe(m: dict[str, Any]) -> str:
    """A readable multi-line summary of a manifest (`aekit info`)."""
    lat, tr = m["latent"], m.get("training", {})
    lines = [
        f"model        {m['model_id']}  ({m.get('arch', '?')}, {m['channels']}-channel)",
        f"folder       {m.get('_dir', '?')}",
        f"ratio        1/{m['ratio']}: {m['latent_channels']} latent channels at H/{m['factor']} x W/{m['factor']}",
        f"padding      {m.get('padding', {}).get('mode', '?')} to multiples of {m['factor']} (bottom/right), cropped back",
        f"input        uint8 pixels -> x/127.5 - 1 (NCHW float32)",
        _describe_latent(m),
        f"onnx         opset {m.get('opset')}, {m.get('exporter')}; files: "
        + ", ".join(f"{k}={v}" for k, v in m["files"].items()),
    ]
    r = m.get("rescaled")
    if isinstance(r, dict):
        lines.append(f"rescaled     {r.get('from')} ({r.get('from_model_id')}, 1/{r.get('from_ratio')} at H/{r.get('from_factor')}) "
                     f"on a grid {r.get('scale', 0):g}x as fine: encoder {r.get('encoder')}; decoder {r.get('decoder')} "
                     "(aekit rescale; the training below is the source's)")
    cc = m.get("channel_context")
    if isinstance(cc, dict):
        fit = cc.get("fit") or {}
        change = [r.get("change_pct") for r in (cc.get("check") or {}).get("qualities", [])]
        lines.append(f"context      channel context {str(cc.get('sha256'))[:8]} (coder 6, Minnen & Singh 2020): "
                     f"{cc.get('slices')} slices, width {cc.get('width')}; trained {fit.get('steps')} steps on "
                     f"{fit.get('data')} in {fit.get('time_s')} s; bytes against coder 5 on its check images: "
                     + (f"{min(change):+.1f} to {max(change):+.1f} %" if change else "?"))
    if "verification" in m:
        v = m["verification"]
        lines.append(f"verified     onnxruntime vs torch on {v.get('images')} real images: max abs err "
                     f"encoder {v.get('encoder_max_abs_err'):.2e}, decoder {v.get('decoder_max_abs_err'):.2e}")
    lines += _describe_speed(m)
    if tr:
        card = _card(m)
        whole = card.get("training") or {}
        stages = (f" (its last stage; {whole['epochs']} epochs, {whole['time_s']} s over all stages: "
                  f"aekit models show {card.get('name') or ''}".rstrip() + ")") \
            if isinstance(whole, dict) and whole.get("epochs") and whole.get("time_s") \
            and whole["epochs"] != tr.get("epochs") else ""
        data, where = _data_shown(tr.get("data"))
        lines.append(f"trained      on {data} ({tr.get('n_train')} train / {tr.get('n_val')} val images{where}), "
                     f"{tr.get('epochs')} epochs, loss {tr.get('loss')}, best val PSNR "
                     f"{tr.get('best_val_psnr', float('nan')):.2f} dB, {tr.get('train_time_s')} s on {tr.get('device')}"
                     + stages)
        if tr.get("classes"):
            lines.append(f"classes      {', '.join(tr['classes'])}")
    if m.get("calibration"):
        cal = m["calibration"]
        per = cal.get("classes", {})
        lines.append(f"calibration  score {cal.get('score')}, alpha {cal.get('alpha')}; "
                     + ", ".join(f"{c}: n={v.get('n')} t={_num(v.get('threshold'))}" for c, v in per.items()))
    return "\n".join(lines)
