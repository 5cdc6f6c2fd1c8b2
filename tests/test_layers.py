"""The layering of docs/architecture.md, checked on the source: which part of the package may import which."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmkgc_dist")
ALLOWED = {
    "config": {"errors"}, "rng": set(), "errors": set(), "runtime": set(),
    "model.optim": set(),
    "model": {"model", "errors", "config"},
    "outputs": {"errors"},
    "checkpoint": {"errors", "outputs", "model.optim", "checkpoint"},
    "run_folder": {"errors", "outputs", "checkpoint", "config"},
    "data": {"config", "rng", "outputs", "data", "errors"},
    "eval": {"model", "model.optim", "rng", "data", "config", "eval", "errors"},
    "training": {"config", "rng", "outputs", "checkpoint", "run_folder", "data", "eval", "model", "model.optim",
                 "training", "errors", "runtime"},
    "parallel": {"config", "rng", "outputs", "checkpoint", "data", "eval", "model", "model.optim", "parallel",
                 "errors", "runtime"},
    # answers from a trained run: everything below but the training package (no trainer, no DeepSpeed)
    "serving": {"config", "rng", "outputs", "checkpoint", "run_folder", "data", "eval", "model", "model.optim",
                "parallel", "errors", "runtime", "serving"},
    # a run composed from its config: beneath the API and the studies
    "compose": {"config", "errors", "outputs", "run_folder", "data", "parallel", "training"},
    "tuning": {"config", "errors", "outputs", "checkpoint", "compose", "model", "parallel", "tuning"},
}
TOP = ("__init__", "api", "cli")          # the floors above everything: they may import anything
TOP_MODULES = 10                          # .py files directly in mmkgc_dist/ at most
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
            if layer in TOP:
                continue                       # the API, the command line and the package's facade
            assert layer in ALLOWED, f"{rel}: a module on no floor (add it to ALLOWED and docs/architecture.md)"
            for target in _imports(path, module):
                target_layer = _layer(target)
                if target_layer in ALLOWED[layer]:
                    continue
                if target_layer:
                    bad.append(f"{rel} imports {target}")
    assert not bad, bad


def _import_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports}, counting imports inside functions too."""
    graph = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                module = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                module = module[:-len(".__init__")] if module.endswith(".__init__") else module
                graph[module] = set()
                for target in _imports(path, os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")):
                    graph[module].add(target)
    known = set(graph)
    return {m: {t if t in known else t.rsplit(".", 1)[0] for t in targets} & known - {m}
            for m, targets in graph.items()}


def test_no_import_circle_anywhere_and_a_small_top():
    graph = _import_graph()
    state: dict = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError(f"import circle: {' -> '.join(path[path.index(target):] + [target])}")
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    top = sorted(f for f in os.listdir(PACKAGE) if f.endswith(".py"))
    assert len(top) <= TOP_MODULES, f"{len(top)} modules at the top of the package: {top}"


def test_runtime_callers_use_only_the_protocol():
    """No ``runtime.<name>`` outside the protocol, and no ``getattr``/``hasattr``/``isinstance`` on a runtime:
    a caller never asks which runtime it holds."""
    Runtime, methods, attributes = _protocol_members()
    members, bad = methods | attributes, []
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            path = os.path.join(root, f)
            if not f.endswith(".py") or path.endswith(os.path.join("parallel", "local.py")) or \
                    path.endswith(os.path.join("parallel", "distributed.py")):
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                holder = None
                if isinstance(node, ast.Attribute):
                    holder, name = node.value, node.attr
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                        node.func.id in ("getattr", "hasattr", "isinstance") and node.args:
                    holder, name = node.args[0], f"{node.func.id}(...)"
                is_runtime = isinstance(holder, ast.Name) and holder.id == "runtime" or \
                    isinstance(holder, ast.Attribute) and holder.attr == "runtime"
                if is_runtime and name not in members:
                    bad.append(f"{os.path.relpath(path, PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
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
    assert {"build", "batch_slice", "reduce_metrics", "candidate_shard", "checkpoint_state"} <= methods
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
    from mmkgc_dist.compose import local_trainer

    Runtime, _, _ = _protocol_members()
    cfg = Config()
    cfg.data.synthetic.num_entities, cfg.data.synthetic.num_triples, cfg.model.dim = 40, 200, 8
    cfg.mat.hidden, cfg.mat.noise_dim = 16, 8
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), show_progress=False)
    assert isinstance(trainer.runtime, Runtime)
    assert "__getattr__" not in vars(type(trainer))
    for name in ("tables", "env", "gather_rows", "candidate_shard"):
        assert not hasattr(trainer, name), f"trainer.{name} resolves: attributes must be explicit"
