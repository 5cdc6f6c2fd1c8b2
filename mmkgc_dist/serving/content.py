"""Entities the graph does not hold, from their content: a text, an image, or precomputed feature vectors become
the modality rows the run fuses, made by the very encoders that made the dataset's features — so a new entity is
encoded exactly like the training entities — and the fusion places it with its structure missing (masked out of
the attention like any missing modality, model/dropout.py).

Each modality's encoder is recorded in the dataset's ``features/<modality>-report.json`` by ``features text`` /
``features images``: the sentence-transformers model's digest (its window, how long texts were handled), the image
model (EfficientNet-Lite name and weights digest, or a TorchScript file's digest) and the batch shape it ran at.
The encoder loaded here must have that digest; features imported from files (``prepare features``) record no
encoder, so a new entity brings its vector for them.

A content mapping: ``{"text": str}`` and/or ``{"image": path or URL}``, precomputed vectors as
``{"features": {modality: vector}}``, and an optional ``"name"`` to show in answers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import QueryError

CONTENT_KEYS = {"text": "text", "image": "visual"}       # what a new entity brings -> the modality it fills
NEW_ENTITY = "<new entity>"


@dataclass
class Content:
    """One new entity's modality rows (only the modalities it has) and the name its answers show."""
    features: dict[str, np.ndarray]
    name: str


def is_content(value) -> bool:
    return isinstance(value, dict)


def fuse_contents(runtime, width: int, dims: dict[str, int], contents: list[Content]):
    """(joint rows, AdaMF weights or None) of new entities on a built runtime: their modality rows fused with the
    structure missing (a structural row of ``width`` zeros, masked out)."""
    import torch

    from ..model.dropout import STRUCTURE
    from ..model.kgc import EntityRows

    n, device = len(contents), runtime.device
    features, masks = {}, {STRUCTURE: torch.zeros(n, dtype=torch.bool, device=device)}
    for m, dim in dims.items():
        have = [c.features.get(m) for c in contents]
        masks[m] = torch.tensor([v is not None for v in have], device=device)
        features[m] = torch.from_numpy(np.stack([v if v is not None else np.zeros(dim, np.float32)
                                                 for v in have])).to(device)
    with torch.no_grad():
        joint, weights = runtime.model.embed(EntityRows(torch.zeros(n, width, device=device), features, masks))
    return joint.float(), weights


def added_contents(names: list[str], features: dict) -> list[Content]:
    """``added.read_added``'s entities as contents."""
    return [Content({m: values[i] for m, (present, values) in features.items() if present[i]}, name)
            for i, name in enumerate(names)]


class ContentEncoder:
    """The dataset's encoders for the run's fused modalities, loaded on first use."""

    def __init__(self, root: str | None, dims: dict[str, int], text_model: str | None = None,
                 image_encoder: str | None = None, image_weights: str | None = None):
        self.root, self.dims = root, dims
        self.text_model, self.image_encoder, self.image_weights = text_model, image_encoder, image_weights
        self._encoders: dict = {}

    # ------------------------------------------------------------------------------------ content
    def encode(self, content: dict) -> Content:
        unknown = set(content) - {"name", "features", *CONTENT_KEYS}
        if unknown:
            raise QueryError(f"new entity: unknown key(s) {sorted(unknown)}; give 'text', 'image' and/or 'features' "
                             f"({{modality: vector}} of {', '.join(self.dims) or 'no fused modality'}), and "
                             f"optionally 'name'")
        vectors = content.get("features") or {}
        if not isinstance(vectors, dict) or set(vectors) - set(self.dims):
            raise QueryError(f"new entity: 'features' must map fused modalities ({', '.join(self.dims)}) to vectors, "
                             f"got {sorted(vectors) if isinstance(vectors, dict) else type(vectors).__name__}")
        features = {m: self._vector(m, v) for m, v in vectors.items() if v is not None}
        for key, modality in CONTENT_KEYS.items():
            if content.get(key) is None:
                continue
            if modality not in self.dims:
                raise QueryError(f"new entity: '{key}' fills the {modality} modality, which this run does not fuse "
                                 f"(it fuses {', '.join(self.dims) or 'none'})")
            if modality in features:
                raise QueryError(f"new entity: give either '{key}' or the {modality} vector, not both")
            features[modality] = self._encode(modality, content[key])
        if not features:
            raise QueryError(f"new entity: no content to place it by; give 'text', 'image' or 'features' of "
                             f"{', '.join(self.dims)}")
        name = content.get("name") or NEW_ENTITY
        return Content(features, str(name))

    def _vector(self, modality: str, value) -> np.ndarray:
        vector = np.asarray(value, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dims[modality],) or not np.isfinite(vector).all():
            raise QueryError(f"new entity: the {modality} vector has {vector.size} values"
                             f"{'' if np.isfinite(vector).all() else ' (NaN/inf among them)'}; this run's "
                             f"{modality} features are {self.dims[modality]}-d finite values")
        return vector

    def _encode(self, modality: str, value) -> np.ndarray:
        encoder = self._encoders.get(modality) or self._load(modality)
        self._encoders[modality] = encoder
        return self._vector(modality, encoder(value))

    # ------------------------------------------------------------------------------------ encoders
    def report(self, modality: str) -> dict:
        """The dataset's record of how its ``modality`` features were made."""
        path = os.path.join(self.root or "", "features", f"{modality}-report.json")
        if self.root is None or not os.path.exists(path):
            raise QueryError(f"new entity: the dataset records no encoder for its {modality} features ("
                             f"{'a generated graph' if self.root is None else f'no {path}'}: made outside "
                             f"`mmkgc-dist features`); give the {modality} vector instead")
        with open(path) as fh:
            return json.load(fh)

    def _load(self, modality: str):
        identity = self.report(modality).get("identity", {})
        kind = identity.get("kind")
        if kind == "texts":
            return self._text_encoder(identity["encoder"])
        if kind == "images":
            return self._image_encoder(identity)
        raise QueryError(f"new entity: the dataset's {modality} features were not made by an encoder this version "
                         f"knows ({kind!r}); give the {modality} vector instead")

    def _text_encoder(self, recorded: dict):
        from ..data.text import TextEncoder

        encoder = TextEncoder(self.text_model, recorded.get("long_texts", "truncate"))
        if encoder.identity["digest"] != recorded.get("digest"):
            raise QueryError(f"new entity: the text model {self.text_model or '(the packaged MiniLM)'} is not the one "
                             f"the dataset's text features were made with ({recorded.get('model')}, digest "
                             f"{str(recorded.get('digest'))[:12]}…); give that model's folder (text_model= / "
                             f"--text-model)")
        return lambda text: encoder.encode([_text(text)])[0][0]

    def _image_encoder(self, identity: dict):
        from ..data.images import decode, load_encoder

        recorded = identity.get("encoder", {})
        spec = recorded.get("encoder")
        if spec == "torchscript":
            if not self.image_encoder:
                raise QueryError("new entity: the dataset's image features were made by a TorchScript encoder; give "
                                 "that file (image_encoder= / --image-encoder)")
            spec = self.image_encoder
        model = load_encoder(spec, self.image_weights)
        digest_key = "sha256" if recorded.get("encoder") == "torchscript" else "weights_sha256"
        if model.identity.get(digest_key) != recorded.get(digest_key):
            raise QueryError(f"new entity: the image encoder {spec} is not the one the dataset's image features were "
                             f"made with (digest {str(recorded.get(digest_key))[:12]}…); give its weights "
                             f"(image_weights= / --image-weights)")
        max_bytes, max_pixels = identity.get("limits", [None, None])
        batch = int(identity.get("batch", 32))

        def encode(path) -> np.ndarray:
            if not isinstance(path, (str, os.PathLike)):
                raise QueryError(f"new entity: 'image' is {type(path).__name__}; expected a path or URL")
            limits = {k: v for k, v in (("max_bytes", max_bytes), ("max_pixels", max_pixels)) if v}
            pixels, reason = decode(os.fspath(path), model.image_size, model.mean, model.std, **limits)
            if pixels is None:
                raise QueryError(f"new entity: image {path}: {reason}")
            return model(pixels[None], pad_to=batch)[0]      # the batch shape the dataset's rows were made at
        return encode


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise QueryError(f"new entity: 'text' is {value!r}; expected a non-empty string")
    return value
