"""The layering of docs/architecture.md, checked on the source: which part of the package may import which."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmkgc_dist")
ALLOWED = {
    "config": set(), "rng": set(), "optim": set(), "data.errors": set(), "host": set(), "divergence": set(),
    "footprint": set(),
    "model": {"model"},
    "outputs": {"data.errors"}, "integrity": {"data.errors", "outputs"},
    "data": {"config", "rng", "outputs", "data"},
    "eval": {"model", "rng", "data", "config", "eval", "divergence"},
    "tables": {"model", "data", "rng"},
    "train": {"config", "rng", "optim", "outputs", "integrity", "data", "eval", "model", "tables", "train", "host",
              "divergence", "footprint"},
    "parallel": {"config", "rng", "optim", "outputs", "integrity", "data", "eval", "model", "tables", "parallel",
                 "divergence"},
}
EXCEPTIONS: set = set()      # none: the trainer is handed its runtime (trainers.py assembles them)


def _layer(module: str) -> str:
    for name in sorted(ALLOWED, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return module.split(".")[0]


def _imports(path: str, module: str):
    package = module.split(".")[:-1] if not path.endswith("__init__.py") else module.split(".")
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            yield target or node.names[0].name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmkgc_dist."):
            yield node.module[len("mmkgc_dist."):]


def test_layers_import_only_downwards():
    bad = []
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, PACKAGE)
            module = rel[:-3].replace(os.sep, ".")
            layer = _layer(module)
            if layer not in ALLOWED:
                continue                       # cli, export: the top may import anything
            for target in _imports(path, module):
                target_layer = _layer(target)
                if target_layer in ALLOWED[layer] | {"data.errors"} or (rel, target_layer) in EXCEPTIONS:
                    continue
                if layer != "data.errors" and target_layer:
                    bad.append(f"{rel} imports {target}")
    assert not bad, bad
