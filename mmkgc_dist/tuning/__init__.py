"""Hyperparameter studies on Optuna: the search space (space.py), the workers and trials (study.py), the
report in the study folder (report.py), a multi-rank trial's torchrun entry (trial.py)."""
