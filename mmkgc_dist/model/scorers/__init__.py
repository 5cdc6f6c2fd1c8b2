"""Scoring functions by name (``model.scoring``): the seam in base.py, one file per function."""
from .base import SCORERS, Scorer, ScoreKernels, make_scorer, register_scorer
from .rotate import RotatE
from .transe import TransE
from .distmult import DistMult
from .complex import ComplEx
from .views import IKRL, TBKGC

__all__ = ["SCORERS", "Scorer", "ScoreKernels", "make_scorer", "register_scorer", "RotatE", "TransE", "DistMult",
           "ComplEx", "IKRL", "TBKGC"]
