"""Launchers: ``train.py`` / ``evaluate.py`` (torchrun entry points) and ``slurm/`` (job scripts and their
submitters). In the installed wheel this folder is ``mmkgc_dist.launch``: ``torchrun -m mmkgc_dist.launch.train``,
``mmkgc-dist-submit``, ``mmkgc-dist-tune-slurm``."""
