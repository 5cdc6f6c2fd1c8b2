"""Runtimes: what differs between one process and N ranks (the contract: ``mmkgc_dist.runtime.Runtime``)."""


def make_runtime(cfg, distributed: bool, env=None):
    """One process: LocalRuntime. Several (torchrun/srun) or --distributed: DistributedRuntime (imported only
    then: TorchRec's process groups and DeepSpeed stay out of a one-process command)."""
    if not distributed:
        from .local import LocalRuntime
        return LocalRuntime(cfg)
    from .distributed import DistributedRuntime
    return DistributedRuntime(cfg, env)
