"""File-to-file stage: `aekit compress` then `aekit decompress` on a folder, as subprocesses.

    row = folder_stage("models/fmnist-r4", "data/fmnist/test", limit=1000, log=print)
Run as separate processes, as a user runs them (start-up included); each child's wall time and own
peak RSS are recorded, so 1,000 vs 10,000 files shows whether memory stays flat.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from aekit.images import scan_folder


def _child(cmd: list[str]) -> dict[str, Any]:
    """Run cmd; wall seconds, exit code, the child's own peak RSS and its stderr tail.

    The peak comes from GNU time's %M when /usr/bin/time exists: a child forked straight
    from this (large) process would report the parent's RSS in ru_maxrss, because Linux
    carries the old address space's high-water mark across fork + exec. Otherwise the
    child's VmHWM is polled from /proc (misses at most the last 20 ms of growth).
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "time.txt"
        full = [str(gnu_time), "-f", "%M", "-o", str(out), *cmd] if gnu_time.exists() else cmd
        t0 = time.perf_counter()
        with open(Path(tmp) / "stderr", "wb") as err:
            p = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=err)
            polled = 0
            while p.poll() is None:
                polled = max(polled, _vm_hwm(p.pid))
                time.sleep(0.02)
        wall = time.perf_counter() - t0
        tail = (Path(tmp) / "stderr").read_text(errors="replace").strip().splitlines()[-3:]
        peak, how = polled, "polled /proc VmHWM"
        if out.exists() and (lines := out.read_text().split()):
            try:
                peak, how = int(lines[-1]) * 1024, "GNU time %M"
            except ValueError:
                pass
    return {"cmd": cmd, "rc": p.returncode, "seconds": wall, "peak_rss_bytes": peak, "peak_rss_from": how,
            "stderr_tail": tail}


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# `python -m aekit.cli` would put the working directory first on sys.path, where a folder named `aekit`
# (a clone of this repository, say) shadows the installed package: the child drops that entry first.
AEKIT_MAIN = "import sys; sys.path.pop(0); from aekit.cli import main; sys.exit(main())"


def aekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", AEKIT_MAIN, *args]


def codec_available() -> str | None:
    """None if `aekit compress` and `aekit decompress` exist, else why not."""
    for sub in ("compress", "decompress"):
        r = subprocess.run(aekit_cmd(sub, "--help"), capture_output=True, text=True)
        if r.returncode != 0:
            return f"`aekit {sub}` is not available ({(r.stderr.strip().splitlines() or ['no output'])[-1]})"
    return None


def mirror(src: Path, dst: Path, limit: int) -> tuple[int, int]:
    """Symlink the first `limit` images of src (all if 0) into dst, same tree; (files, bytes)."""
    samples, _, _ = scan_folder(src)
    if limit:
        if limit > len(samples):
            raise ValueError(f"{src}: --folder-limit {limit} but the folder holds {len(samples)} images")
        samples = samples[:limit]
    total = 0
    for s in samples:
        link = dst / s.rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(s.path)
        total += s.path.stat().st_size
    return len(samples), total


def tree_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) of the outputs under root; hidden files (the jobs' own records) are not outputs."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def folder_stage(model: str, folder: str, limit: int, log: Callable[[str], None], device: str = "cpu") -> dict[str, Any]:
    """Compress then decompress the (first `limit` files of the) folder; one dict of figures."""
    row: dict[str, Any] = {"folder": str(folder), "limit": limit, "model": str(model), "device": device}
    if (why := codec_available()) is not None:
        row.update(status="skipped", message=why)
        log(f"folder {folder}: {why} -- skipped")
        return row
    work = Path(tempfile.mkdtemp(prefix="aekit-bench-"))
    try:
        n, in_bytes = mirror(Path(folder), work / "src", limit)
        row.update(files=n, source_bytes=in_bytes, startup=_child(aekit_cmd("--version"))["seconds"])
        comp = _child(aekit_cmd("compress", str(work / "src"), "-m", str(model), "-o", str(work / "lat"),
                                     "--device", device))
        n_lat, lat_bytes = tree_bytes(work / "lat") if (work / "lat").exists() else (0, 0)
        dec = _child(aekit_cmd("decompress", str(work / "lat"), "-o", str(work / "out"), "-m", str(model),
                                    "--device", device))
        n_out, _ = tree_bytes(work / "out") if (work / "out").exists() else (0, 0)
        row.update(latent_files=n_lat, latent_bytes=lat_bytes, decoded_files=n_out, compress=comp, decompress=dec)
        for k, c in (("compress", comp), ("decompress", dec)):
            c["images_per_s"] = n / c["seconds"]
            c["source_mb_per_s"] = in_bytes / c["seconds"] / 1e6
        ok = comp["rc"] == 0 and dec["rc"] == 0 and n_lat == n and n_out == n
        row["status"] = "ok" if ok else "error"
        if not ok:
            row["message"] = (f"compress rc {comp['rc']} ({n_lat}/{n} files), decompress rc {dec['rc']} "
                              f"({n_out}/{n} files): {' | '.join(comp['stderr_tail'] + dec['stderr_tail'])}")
        log(f"folder {folder} ({n} files): compress {comp['images_per_s']:.0f} img/s, peak RSS "
            f"{comp['peak_rss_bytes'] / 2**20:.0f} MiB; decompress {dec['images_per_s']:.0f} img/s, peak RSS "
            f"{dec['peak_rss_bytes'] / 2**20:.0f} MiB; {lat_bytes / max(n_lat, 1):.0f} B/latent file"
            + ("" if ok else f"; FAILED: {row['message']}"))
    except (OSError, ValueError) as e:
        row.update(status="error", message=f"folder {folder}: {e}")
        log(row["message"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row
