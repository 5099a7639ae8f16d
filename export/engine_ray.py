"""Ray engine: a folder job (compress, decompress, screen) as a Ray Data pipeline on a cluster.

    aekit compress s3://bucket/images -m models/fmnist-r4 -o s3://bucket/latents --engine ray --address auto
Stages: list files (fsspec) -> read bytes and decode them (CPU tasks) -> model and entropy coding in
a pool of actors (one onnxruntime session each, `num_gpus` when the cluster has GPUs) -> write
outputs atomically (CPU tasks) -> one small result row per file back to the driver. The package
supplies a picklable job (`RayJob`); Ray, fsspec and pyarrow are imported only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

RAY_EXTRA = "pip install 'aekit[ray]'  (ray[data], fsspec, pyarrow)"
# Object stores make an object visible only once it is completely written: no temp name needed.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "memory"}


class EngineError(Exception):
    """The Ray engine cannot run (Ray missing, cluster unreachable, bad engine option)."""


@dataclass
class RayConfig:
    address: str | None = None  # None: start Ray on this machine; "auto": the running cluster; "ray://HOST:10001"
    actors: int = 0  # model actors (0: one per GPU on a GPU cluster, else one per CPU but one, at least 1)
    actor_cpus: float = 1.0  # CPUs reserved by each model actor (also its onnxruntime threads)
    actor_gpus: float = -1.0  # GPUs per model actor (-1: 1 when the cluster has GPUs, else 0)
    task_cpus: float = 0.25  # CPUs reserved by each read/decode and write task (I/O-bound, small)
    batch_size: int = 64  # files per actor call; images of equal size share one ONNX call
    read_batch: int = 64  # files per read/decode task call
    overwrite: bool = False  # replace existing outputs (default: skip them, so a rerun resumes)
    progress: bool = False  # Ray Data's progress bars


class RayJob(Protocol):
    """What a package supplies (pickled to every worker; keep it to paths and configs).

    decode(name, data) runs in CPU tasks: file bytes -> whatever run() takes (raise: the file fails).
    run(items) runs in the actors (models built once per actor by setup()): items are
    (name, output path, decoded); returns one (output bytes, metadata dict, error line or "") per
    file. error(name, exc): one line naming the file.
    """

    def setup(self) -> None: ...
    def decode(self, name: str, data: bytes) -> Any: ...
    def run(self, items: list[tuple[str, str, Any]]) -> list[tuple[bytes, dict, str]]: ...
    def error(self, name: str, exc: BaseException) -> str: ...


@dataclass
class Listing:
    """Files a job will process, planned on the driver before the pipeline starts."""

    fs_in: Any  # fsspec filesystem of the sources
    fs_out: Any  # fsspec filesystem of the outputs (None: the job writes no per-file outputs)
    todo: list[tuple[str, str, str]] = field(default_factory=list)  # (name in messages, source, output)
    skipped: int = 0  # outputs that already existed and are up to date (resume)
    stale: int = 0  # existing outputs to redo: the resume ledger says another source or recipe made them
    ignored: int = 0  # files of other kinds in the tree
    failed: list[str] = field(default_factory=list)  # problems found while listing, one line per file


# ---- options ---------------------------------------------------------------------------------
def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine and the Ray options, shared by compress, decompress and screen."""
    r = RayConfig()
    g = p.add_argument_group("engine", "local (default, needs nothing more) or a Ray cluster (aekit[ray])")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: run as a Ray Data pipeline; SRC and outputs may be fsspec URLs (s3://, gs://)")
    g.add_argument("--address", default=r.address,
                   help="Ray cluster: None starts one on this machine; auto: the running cluster; ray://HOST:10001")
    g.add_argument("--actors", type=int, default=r.actors,
                   help="model actors (0: one per GPU, else one per CPU but one)")
    g.add_argument("--actor-cpus", type=float, default=r.actor_cpus, help="CPUs per model actor")
    g.add_argument("--actor-gpus", type=float, default=r.actor_gpus,
                   help="GPUs per model actor (-1: 1 when the cluster has GPUs, else 0)")


def ray_config(args: argparse.Namespace, batch_size: int, overwrite: bool = False) -> RayConfig:
    return RayConfig(address=args.address, actors=args.actors, actor_cpus=args.actor_cpus,
                     actor_gpus=args.actor_gpus, batch_size=batch_size, overwrite=overwrite,
                     progress=bool(getattr(args, "progress", False)))


# ---- cluster ---------------------------------------------------------------------------------
def connect(cfg: RayConfig) -> Any:
    """Import Ray and join (or start) the cluster; a session that already called ray.init() is reused."""
    try:
        import ray
    except ImportError:
        raise EngineError(f"--engine ray needs Ray installed: {RAY_EXTRA}") from None
    if not ray.is_initialized():
        address = None if cfg.address in (None, "", "local") else cfg.address
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"cannot reach the Ray cluster at {address}: {e}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results (and records) in listing order
    ctx.enable_progress_bars = cfg.progress
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not its progress notes; errors still show
    return ray


def actor_resources(ray: Any, cfg: RayConfig) -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor) from the config and the cluster's resources."""
    res = ray.cluster_resources()
    gpus = cfg.actor_gpus if cfg.actor_gpus >= 0 else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
    if cfg.actors > 0:
        n = cfg.actors
    elif gpus > 0:
        n = max(1, int(res.get("GPU", 0) / gpus))
    else:  # leave one CPU to the read/decode and write tasks
        n = max(1, int((res.get("CPU", 1) - 1) / max(cfg.actor_cpus, 1e-3)))
    return n, cfg.actor_cpus, gpus


# ---- listing ---------------------------------------------------------------------------------
def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) of a local path or URL (s3://, gs://, ...)."""
    try:
        import fsspec
    except ImportError:
        raise EngineError(f"--engine ray needs fsspec: {RAY_EXTRA}") from None
    return fsspec.core.url_to_fs(str(url))


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def single_output(fs_in: Any, root: str, fs_out: Any, out_root: str) -> bool:
    """Does a single source file map to the output file out_root (not into a folder of that name)?"""
    return bool(fs_in.isfile(root) and posixpath.splitext(out_root)[1] and not fs_out.isdir(out_root))


def output_root(src: str, dst: str) -> tuple[Any, str]:
    """(fsspec filesystem, folder) that holds a job's outputs: dst, or a single output's folder."""
    fs_in, root = filesystem(src)
    fs_out, out_root = filesystem(dst)
    return fs_out, posixpath.dirname(out_root) if single_output(fs_in, root, fs_out, out_root) else out_root


def list_tree(src: str, dst: str | None, want: Callable[[str], bool], out_name: Callable[[str], str],
              overwrite: bool = False, clash_hint: str = "",
              fresh: Callable[[str, str, dict], bool] | None = None,
              known: Callable[[str], bool] | None = None) -> Listing:
    """Plan a job: wanted files under src (sorted, hidden ones ignored) and their outputs under dst.

    Mirrors the local engine: a single file maps to dst (a file name) or into dst (a folder);
    two sources with one output fail the second; an existing output is skipped unless overwrite
    or stale. fresh(source path, output path, the source's listing entry) decides staleness (the
    resume ledger, aekit.codec.ray_jobs.RayLedger; it also stamps every source, as the local
    engine does); without it every existing output counts as up to date. known(output path): was it
    written by an aekit job (a ledger record)? An existing output that was not, or that is its own
    source, fails instead of being replaced (the first unless overwrite, the second always).
    """
    fs_in, root = filesystem(src)
    fs_out, out_root = filesystem(dst) if dst is not None else (None, "")
    listing = Listing(fs_in, fs_out)
    if fs_in.isfile(root):
        name = posixpath.basename(root)
        single = dst is not None and single_output(fs_in, root, fs_out, out_root)
        target = out_root if single else posixpath.join(out_root, out_name(name)) if dst is not None else ""
        pairs = [(str(src), root, target, fs_in.info(root) if fresh else {})]
    elif fs_in.isdir(root):
        pairs = []
        entries = fs_in.find(root, detail=True) if fresh else dict.fromkeys(fs_in.find(root), {})
        for path in sorted(entries):
            rel = posixpath.relpath(path, root)
            if _hidden(rel):
                continue  # hidden files, including temp files of an interrupted run
            if not want(rel):
                listing.ignored += 1
                continue
            out = posixpath.join(out_root, out_name(rel)) if dst is not None else ""
            pairs.append((f"{str(src).rstrip('/')}/{rel}", path, out, entries[path]))
    else:
        raise FileNotFoundError(f"{src}: no such file or folder")
    existing = set(fs_out.find(out_root)) if dst is not None and fs_out.exists(out_root) else set()
    claimed: dict[str, str] = {}
    for name, path, out, info in pairs:
        if out and out in claimed:
            listing.failed.append(f"{name}: its output {posixpath.basename(out)} is also written from "
                                  f"{claimed[out]} in this run{'; ' + clash_hint if clash_hint else ''}")
            continue
        claimed[out] = name
        up_to_date = fresh(path, out, info) if fresh and out else True  # after the clash check, as locally
        if out and out in existing:  # one listing of DST, not a request per file
            if out == path:
                listing.failed.append(f"{name}: its output {out} is the source itself; choose another -o")
                continue
            if up_to_date and not overwrite:
                listing.skipped += 1
                continue
            if not overwrite and known is not None and not known(out):
                listing.failed.append(f"{name}: its output {out} exists and was not written by an aekit job here "
                                      "(no record in .aekit-outputs.jsonl): not replaced; --overwrite replaces it")
                continue
            listing.stale += not overwrite
        listing.todo.append((name, path, out))
    return listing


# ---- writing ---------------------------------------------------------------------------------
def write_bytes(fs: Any, path: str, data: bytes) -> int:
    """Write a whole output: local files via temp name + rename, object stores directly (objects
    appear whole), other filesystems via a hidden temp name and a move."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        from aekit.images import atomic_write_bytes

        atomic_write_bytes(path, data)
        return len(data)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & OBJECT_STORES:
        fs.pipe_file(path, data)
        return len(data)
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.part")
    fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)
    return len(data)


# ---- pipeline stages (run on the workers) ------------------------------------------------------
def _read_decode(batch: dict[str, np.ndarray], job: RayJob, fs: Any) -> dict[str, np.ndarray]:
    """CPU task: read each file's bytes and decode them (pickled for the next stage)."""
    decoded, errors, sizes = [], [], []
    for name, path in zip(batch["name"], batch["src"]):
        data = b""
        try:
            data = fs.cat_file(path)
            decoded.append(pickle.dumps(job.decode(str(name), data), protocol=5))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the file
            decoded.append(b"")
            errors.append(job.error(str(name), e))
        sizes.append(len(data))
    return {"name": batch["name"], "dst": batch["dst"], "decoded": np.array(decoded, dtype=object),
            "error": np.array(errors, dtype=object), "bytes_in": np.array(sizes, dtype=np.int64)}


class _Worker:
    """Model actor: the job's models load once (one onnxruntime session per actor)."""

    def __init__(self, job: RayJob):
        self.job = job
        job.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(n) for n in batch["name"]]
        errors = [str(e) for e in batch["error"]]
        outs, meta = [b""] * len(names), [b""] * len(names)
        ok = [i for i, e in enumerate(errors) if not e]
        if ok:
            try:
                results = self.job.run([(names[i], str(batch["dst"][i]), pickle.loads(batch["decoded"][i]))
                                        for i in ok])
            except Exception as e:  # noqa: BLE001 - a failing batch fails its files, the job goes on
                results = [(b"", {}, self.job.error(names[i], e)) for i in ok]
            for i, (out, m, err) in zip(ok, results):
                outs[i], errors[i] = out, err
                meta[i] = pickle.dumps(m, protocol=5) if m else b""
        return {"name": batch["name"], "dst": batch["dst"], "out": np.array(outs, dtype=object),
                "meta": np.array(meta, dtype=object), "error": np.array(errors, dtype=object),
                "bytes_in": batch["bytes_in"]}


def _write(batch: dict[str, np.ndarray], fs: Any) -> dict[str, np.ndarray]:
    """CPU task: write each output atomically; the bytes do not travel back to the driver."""
    errors, sizes = [str(e) for e in batch["error"]], []
    for i, (dst, out) in enumerate(zip(batch["dst"], batch["out"])):
        n = 0
        if not errors[i]:
            try:
                n = write_bytes(fs, str(dst), out)
            except OSError as e:
                errors[i] = f"{batch['name'][i]}: cannot write {dst} ({e})"
        sizes.append(n)
    return {"name": batch["name"], "dst": batch["dst"], "meta": batch["meta"],
            "error": np.array(errors, dtype=object), "bytes_in": batch["bytes_in"], "bytes_out": np.array(sizes)}


# ---- driver ----------------------------------------------------------------------------------
def run_files(job: RayJob, listing: Listing, cfg: RayConfig) -> Iterator[dict[str, Any]]:
    """Run the pipeline over listing.todo; yields one row per file, in listing order:
    name, dst, error ("" when fine), bytes_in, bytes_out, meta (the job's dict for that file)."""
    if not listing.todo:
        return
    ray = connect(cfg)
    n, cpus, gpus = actor_resources(ray, cfg)
    rows = [{"name": name, "src": src, "dst": dst} for name, src, dst in listing.todo]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // cfg.read_batch, 4 * n + 4)))
    ds = ds.map_batches(_read_decode, fn_args=(job, listing.fs_in), batch_size=cfg.read_batch,
                        num_cpus=cfg.task_cpus, batch_format="numpy")
    ds = ds.map_batches(_Worker, fn_constructor_args=(job,), batch_size=cfg.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpus, num_gpus=gpus,
                        batch_format="numpy")
    if listing.fs_out is not None:
        ds = ds.map_batches(_write, fn_args=(listing.fs_out,), batch_size=cfg.read_batch,
                            num_cpus=cfg.task_cpus, batch_format="numpy")
    for row in ds.iter_rows():
        meta = row.get("meta") or b""
        yield {"name": row["name"], "dst": row["dst"], "error": row["error"] or "",
               "bytes_in": int(row["bytes_in"]), "bytes_out": int(row.get("bytes_out", 0) or 0),
               "meta": pickle.loads(meta) if meta else {}}
