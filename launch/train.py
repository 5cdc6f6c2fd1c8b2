"""torchrun entry point: parse config + dotted overrides → build → train → evaluate.

    torchrun --nproc_per_node=1 launch/train.py                       # embedded default graph
    torchrun --nproc_per_node=1 launch/train.py --config configs/db15k.yaml --train.lr=1e-4
"""
import sys

from mmkgc_dist.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
