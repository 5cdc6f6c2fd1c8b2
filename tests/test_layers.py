"""The layering of docs/architecture.md, checked on the source: which part of the package may import which."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmkgc_dist")
ALLOWED = {
    "config": {"errors"}, "rng": set(), "optim": set(), "errors": set(), "host": set(), "footprint": {"errors"},
    "runtime": set(),
    "model": {"model"},
    "outputs": {"errors"},
    "checkpoint": {"errors", "outputs", "optim", "checkpoint"},
    "run_folder": {"errors", "outputs", "checkpoint", "config"},
    "data": {"config", "rng", "outputs", "data", "errors"},
    "eval": {"model", "rng", "data", "config", "eval", "errors"},
    "tables": {"model", "data", "rng"},
    "training": {"config", "rng", "optim", "outputs", "checkpoint", "run_folder", "data", "eval", "model",
                 "tables", "training", "host", "errors", "footprint", "runtime"},
    "parallel": {"config", "rng", "optim", "outputs", "checkpoint", "data", "eval", "model", "tables", "parallel",
                 "errors", "runtime"},
}
EXCEPTIONS: set = set()      # none: the trainer is handed its runtime (parallel.make_runtime builds it)


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
                continue                       # cli, api, tuning, export: the top may import anything
            for target in _imports(path, module):
                target_layer = _layer(target)
                if target_layer in ALLOWED[layer] or (rel, target_layer) in EXCEPTIONS:
                    continue
                if target_layer:
                    bad.append(f"{rel} imports {target}")
    assert not bad, bad


def _protocol_members():
    from mmkgc_dist.runtime import Runtime

    methods = {n for n, v in vars(Runtime).items() if callable(v) and not n.startswith("_")}
    attributes = set(Runtime.__annotations__)
    return Runtime, methods, attributes


def test_both_runtimes_define_every_member_of_the_runtime_protocol_with_its_parameters():
    import inspect

    from mmkgc_dist.parallel.distributed import DistributedRuntime
    from mmkgc_dist.parallel.local import LocalRuntime

    Runtime, methods, attributes = _protocol_members()
    assert {"build", "split", "reduce_metrics", "candidate_shard", "checkpoint_state"} <= methods
    for cls in (LocalRuntime, DistributedRuntime):
        for name in sorted(methods):
            assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
            want = [p for p in inspect.signature(getattr(Runtime, name)).parameters if p != "self"]
            got = [p for p in inspect.signature(getattr(cls, name)).parameters if p != "self"]
            assert got == want, f"{cls.__name__}.{name}{got}: the protocol says {want}"
        source = inspect.getsource(cls)
        for name in sorted(attributes):      # set in __init__/build (or a class attribute / property)
            assert hasattr(cls, name) or f"self.{name}" in source, f"{cls.__name__} never sets {name}"


def test_a_built_local_runtime_is_a_runtime_and_the_trainer_forwards_nothing():
    from mmkgc_dist.config import Config
    from mmkgc_dist.data.synthetic import generate
    from mmkgc_dist.trainers import local_trainer

    Runtime, _, _ = _protocol_members()
    cfg = Config()
    cfg.data.synthetic.num_entities, cfg.data.synthetic.num_triples, cfg.model.dim = 40, 200, 8
    cfg.mat.hidden, cfg.mat.noise_dim = 16, 8
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), show_progress=False)
    assert isinstance(trainer.runtime, Runtime)
    assert "__getattr__" not in vars(type(trainer))
    for name in ("tables", "env", "gather_rows", "candidate_shard"):
        assert not hasattr(trainer, name), f"trainer.{name} resolves: attributes must be explicit"
