"""Worker for the one-semantics test: trains the default job for N steps in one process (``--local``) or as
one rank of a torchrun world, and writes the initial tables' digests and the per-step global losses.
``--resume RUN`` first continues from RUN's newest checkpoint, ``--save RUN`` saves one at the end; both that and
``--eval-only`` (no training) add the test-split metrics (checkpoints move between world sizes).
``--features`` also writes each modality's trained rows, one per entity (``features-<rank>.pt``), and the
number of rows this process's modality tables hold (sparse tables)."""
import hashlib
import json
import os
import sys

import torch

from mmkgc_dist.config import load_config, parse_overrides
from mmkgc_dist.data.synthetic import generate


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    out, local, eval_only = sys.argv[1], "--local" in sys.argv, "--eval-only" in sys.argv
    features = "--features" in sys.argv
    args = [a for a in sys.argv[2:] if a not in ("--local", "--eval-only", "--features")]
    paths = {flag: args[args.index(flag) + 1] for flag in ("--save", "--resume") if flag in args}
    overrides = [a for i, a in enumerate(args) if a not in paths and a not in paths.values()]
    run_dir = paths.get("--save") or paths.get("--resume")
    torch.set_num_threads(1)
    cfg = load_config(None, parse_overrides(overrides))
    if cfg.data.source == "parquet":              # a prepared dataset (e.g. of `prepare inductive`)
        from mmkgc_dist.data.build import build_dataset
        data = build_dataset(cfg)
    else:
        data = generate(cfg.data.synthetic)
    if local:
        try:
            from mmkgc_dist.compose import local_trainer
        except ImportError:                       # checkouts from before compose.py, then before the runtimes
            try:
                from mmkgc_dist.trainers import local_trainer
            except ImportError:                       # a checkout from before the runtimes (benchmarks/semantics.py)
                from mmkgc_dist.training.trainer import Trainer as local_trainer
        trainer, rank = local_trainer(cfg, data, run_dir, show_progress=False), 0
        tables = {"entity": trainer.runtime.tables.entity.weight, "relation": trainer.runtime.tables.relation.weight}
    else:
        try:
            from mmkgc_dist.compose import distributed_trainer
        except ImportError:                       # checkouts from before compose.py, then before the runtimes
            try:
                from mmkgc_dist.trainers import distributed_trainer
            except ImportError:
                from mmkgc_dist.parallel.trainer import DistributedTrainer as distributed_trainer
        trainer = distributed_trainer(cfg, data, run_dir, show_progress=False)
        rank = trainer.runtime.env.rank
        tables = {name: trainer.runtime.tables.full_table(name) for name in ("entity", "relation")}
    initial = {name: digest(t) for name, t in tables.items()}
    initial["dense"] = digest(torch.cat([p.detach().flatten() for p in trainer.runtime.model.parameters()] + [torch.zeros(0)]))
    if trainer.runtime.generators is not None:
        initial["generators"] = digest(torch.cat([p.detach().flatten() for p in trainer.runtime.generators.parameters()]))
        # the generators' optimizer rule: class and hyperparameters (not the kernel flags)
        opt = trainer.runtime.opt_generator
        initial["generator_optimizer"] = [type(opt).__name__] + [
            {k: v for k, v in g.items() if k not in ("params", "fused", "foreach", "capturable", "differentiable")}
            for g in opt.param_groups]
    if "--resume" in paths:
        assert trainer.resume(), "no checkpoint to resume from"
    losses = []
    for batch, negatives in [] if eval_only else trainer.batches():
        losses.append(trainer.runtime.reduce_metrics(trainer.step_fn(batch, negatives))["loss"])
        trainer.step += 1
        trainer.batch_in_epoch += 1
        if len(losses) == cfg.train.max_steps:
            break
    result = {"initial": initial, "losses": losses}
    if "--save" in paths:
        trainer.save()
    if "--save" in paths or eval_only:
        result["metrics"] = trainer.evaluate("test")
    if features:
        result["modality_rows"], trained = {}, {}
        for m in trainer.modalities:
            if local:
                rows = trainer.runtime.tables.features[m].weight
                trained[m] = trainer.runtime.tables.modality_rows(m, torch.arange(trainer.data.num_entities))
            else:
                rows = trainer.runtime.tables._weight(m).local_shards()[0].tensor
                trained[m] = trainer.runtime.tables.full_table(m)
            result["modality_rows"][m] = rows.shape[0]
        torch.save({m: t.detach().clone() for m, t in trained.items()}, os.path.join(out, f"features-{rank}.pt"))
    with open(os.path.join(out, f"{'local' if local else 'rank'}-{rank}.json"), "w") as fh:
        json.dump(result, fh)
    if not local:       # barrier + destroy + immediate exit: a rank's teardown can otherwise abort (SIGABRT)
        try:
            from mmkgc_dist.parallel.env import exit_distributed
        except ImportError:                       # a checkout from before it (benchmarks/semantics.py --repo)
            from mmkgc_dist.parallel.env import shutdown_distributed as exit_distributed
        exit_distributed()


if __name__ == "__main__":
    main()
