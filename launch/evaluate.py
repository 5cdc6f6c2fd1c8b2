"""Evaluate a run folder's checkpoint: python launch/evaluate.py RUN_DIR [--split test] [--ties optimistic]"""
import sys

from mmkgc_dist.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
