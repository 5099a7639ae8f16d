"""The house stands on one rule: imports flow one way, up this stack (README: Architecture).

    aekit.serve                      the HTTP server: uses the codec and the detector
    aekit.bench                      benchmarks and evaluations: may use everything below
    aekit.codec    aekit.detector    the two products; neither imports the other
    aekit.export                     ONNX export and the shared runtime: manifest, entropy coder,
                                     onnxruntime sessions, features, the Ray engine
    aekit                            core: configs, models, training, images, metrics, CLI root
A layer imports only layers below it; the CLI root finds the packages' subcommands through
entry points, so the core never imports them. One wheel, one import name (test_packaging.py).
Inside the core, models stack as in CompressAI: layers and entropy models, then aekit.models
(base -> blocks -> the architectures); inside the server, uploads and errors, then server, then app;
inside the bench, the record (schema) and helpers, then stages and quality, then the sweep (run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aekit", "export", "codec", "detector", "bench", "serve")
ALLOWED = {
    "aekit": set(),
    "export": {"aekit"},
    "codec": {"aekit", "export"},
    "detector": {"aekit", "export"},
    "bench": {"aekit", "export", "codec", "detector"},
    "serve": {"aekit", "export", "codec", "detector"},
}


def layer_of(module: str) -> str | None:
    """'aekit.codec.core' -> 'codec'; 'aekit.images' -> 'aekit'; a bare 'codec' -> 'codec!' (not installed)."""
    parts = module.split(".")
    if parts[0] == "aekit":
        return parts[1] if len(parts) > 1 and parts[1] in PACKAGES[1:] else "aekit"
    return parts[0] + "!" if parts[0] in PACKAGES[1:] else None


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {layer_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(layer_of(node.module))
            if node.module == "aekit":  # from aekit import codec
                names |= {layer_of("aekit." + a.name) for a in node.names}
    return names - {None}


def test_imports_flow_one_way():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for dep in imported_packages(path) - ALLOWED[pkg] - {pkg}:
                bad.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not bad, "layering violated:\n" + "\n".join(bad)


# Modules of one layer that stack (module -> the modules of its package it may import).
STACKS = {
    "aekit/layers.py": set(), "aekit/entropy_models.py": set(),
    "aekit/models/base.py": set(), "aekit/models/blocks.py": set(),
    "aekit/models/convae.py": {"aekit.models.base", "aekit.models.blocks"},
    "aekit/models/rd.py": {"aekit.models.base"},
    "serve/errors.py": {"aekit.serve.models"}, "serve/uploads.py": {"aekit.serve.errors"},
    "serve/server.py": {"aekit.serve.config", "aekit.serve.errors", "aekit.serve.models", "aekit.serve.uploads",
                        "aekit.serve.learn"},
    # the bench: the record and the helpers, then the stages and the quality row, then the sweep (run.py)
    "bench/schema.py": {"aekit.bench.timing"}, "bench/summary.py": {"aekit.bench.schema"},
    "bench/failures.py": {"aekit.bench.flops"}, "bench/devices.py": {"aekit.bench.backends", "aekit.bench.flops"},
    "bench/stages.py": {"aekit.bench.backends", "aekit.bench.inputs", "aekit.bench.schema", "aekit.bench.timing",
                        "aekit.bench.jpeg"},
    "bench/quality.py": {"aekit.bench.jpeg", "aekit.bench.inputs", "aekit.bench.sysinfo"},
}
PACKAGE_OF = {"aekit": "aekit.models", "serve": "aekit.serve", "bench": "aekit.bench"}  # folder -> import name


def test_modules_inside_a_package_stack():
    bad = []
    for rel, allowed in STACKS.items():
        tree = ast.parse((ROOT / rel).read_text())
        package = PACKAGE_OF[rel.split("/")[0]]
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            bad += [f"{rel} imports {m}" for m in mods if m.startswith(package) and m not in allowed]
    assert not bad, "module stack violated:\n" + "\n".join(bad)


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys, aekit, aekit.images, aekit.config, aekit.cli, aekit.export.manifest, aekit.export.runtime\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
