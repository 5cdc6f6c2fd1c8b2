"""Worker for the distributed tests, started by torchrun: trains a tiny graph for a few steps and writes
what the tests compare (losses, metrics, parameter digests, shard sizes) to OUT/rank-<r>.json."""
import json
import os
import sys

import torch

from mmkgc_dist.config import load_config, parse_overrides
from mmkgc_dist.data.synthetic import generate
from mmkgc_dist.errors import TrainingDiverged
from mmkgc_dist.eval.metrics import link_prediction_metrics
from mmkgc_dist.eval.engine import filtered_ranks
from mmkgc_dist.parallel.env import exit_distributed
from mmkgc_dist.runtime import Runtime
from mmkgc_dist.compose import distributed_trainer
from support import TINY as BASE, settings   # tests/ is this script's folder

TINY = settings(BASE, "--train.log_every=1")


def digest(module: torch.nn.Module) -> dict:
    return {k: v.detach().double().sum().item() for k, v in module.state_dict().items()}


def main() -> None:
    """argv: OUT [--run-dir DIR] [--save] [--resume] [overrides...]: train (train.max_steps steps from the
    cursor), optionally save a checkpoint / resume from the newest one first."""
    out, args = sys.argv[1], sys.argv[2:]
    run_dir = args[args.index("--run-dir") + 1] if "--run-dir" in args else None
    flags = {a for a in args if a in ("--save", "--resume", "--eval-only", "--poison-rank-1")}
    extra = [a for i, a in enumerate(args) if a not in flags and a != "--run-dir" and
             (i == 0 or args[i - 1] != "--run-dir")]
    torch.set_num_threads(1)
    cfg = load_config(None, parse_overrides(TINY + extra))
    trainer = distributed_trainer(cfg, generate(cfg.data.synthetic), run_dir=run_dir, show_progress=False)
    rank = trainer.runtime.env.rank
    assert isinstance(trainer.runtime, Runtime)      # the contract holds for the distributed runtime too
    if getattr(trainer.runtime, "engine", None):     # DeepSpeed's shared-memory kernel is never loaded (its JIT
        import deepspeed.comm.comm as ds_comm        # lock outlives a killed process and hangs later starts)
        assert ds_comm.cdb.shm_comm_op is None
    if "--resume" in flags:
        assert trainer.resume(), "no checkpoint to resume from"
    losses = []
    for batch, negatives in ([] if "--eval-only" in flags else trainer.batches()):
        losses.append(trainer.runtime.reduce_metrics(trainer.step_fn(batch, negatives))["loss"])
        trainer.step += 1
        trainer.batch_in_epoch += 1
        if len(losses) == cfg.train.max_steps:
            break
    if "--poison-rank-1" in flags:        # one NaN in rank 1's shard only: every rank must refuse the save
        if rank == 1:
            with torch.no_grad():
                trainer.runtime.tables._weight("entity").local_shards()[0].tensor[0, 0] = float("nan")
        try:
            trainer.save()
        except TrainingDiverged as exc:
            with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
                json.dump({"rank": rank, "refused": str(exc)}, fh)
            exit_distributed()
    if "--save" in flags:
        trainer.save()
    metrics = trainer.evaluate("test")
    # Reference: one process ranks with the gathered full tables and the same kernels.
    tables = {name: trainer.runtime.tables.full_table(name) for name in ["entity", "relation"] + trainer.modalities}
    from mmkgc_dist.model.kgc import EntityRows
    masks = {m: torch.from_numpy(trainer.data.features[m].present) for m in trainer.modalities}
    rows = EntityRows(tables["entity"], {m: tables[m] for m in trainer.modalities}, masks)
    with torch.no_grad():
        joint = trainer.runtime.model.embed(rows)[0]
    scoring = trainer.scoring
    reference = link_prediction_metrics(filtered_ranks(joint, tables["relation"], scoring,
                                                       trainer.data.splits["test"], trainer.evaluator.known_triples(),
                                                       cfg.eval.batch_size, cfg.eval.ties))
    # Top-10 tails of the first test queries by the gathered tables (a one-process load must agree).
    queries = trainer.data.splits["test"][:8]
    with torch.no_grad():
        query = scoring.queries.evaluation_query(joint[torch.from_numpy(queries[:, 0])],
                                                 torch.from_numpy(queries[:, 1]), tables["relation"], head=False)
        top = torch.topk(-scoring.kernels.all_pairs(query, joint), 10, dim=1, largest=False)   # as predict
    result = {"rank": rank, "losses": losses, "metrics": metrics, "reference": reference,
              "queries": queries.tolist(), "top_ids": top.indices.tolist(),
              "top_scores": (scoring.scorer.bias - top.values).tolist(),
              "dense": digest(trainer.runtime.model),
              "dense_exact": [p.detach().flatten().tolist() for p in trainer.runtime.model.parameters()],
              "generator_exact": [p.detach().flatten().tolist() for p in trainer.runtime.generators.parameters()]
              if trainer.runtime.generators is not None else [],
              "entity_shards": trainer.runtime.tables.local_shard_sizes("entity"),
              "relation_exact": tables["relation"].flatten().tolist(),
              "plan": trainer.runtime.tables.plan_json(),
              "feature_drift": {m: (tables[m] - torch.from_numpy(trainer.data.features[m].values)).abs().max().item()
                                for m in trainer.modalities},
              "feature_dtype": {m: str(trainer.runtime.tables._weight(m).metadata().tensor_properties.dtype)
                                if hasattr(trainer.runtime.tables._weight(m), "local_shards")
                                else str(trainer.runtime.tables._weight(m).dtype) for m in trainer.modalities}}
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
        json.dump(result, fh)
    exit_distributed()      # barrier + destroy + immediate exit: a rank's teardown can otherwise abort (SIGABRT)


if __name__ == "__main__":
    main()
