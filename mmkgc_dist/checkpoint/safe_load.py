"""Loading that never executes code from a file.

torch files load with ``weights_only=True`` (explicitly); the pickled metadata of torch.distributed.checkpoint
goes through an unpickler that builds only DCP's own metadata classes (by name), torch sizes and dtypes, and its
declared sizes are bounded by the bytes the folder holds; DCP's pickled byte items and DeepSpeed's files load
with ``weights_only=True``.
"""
from __future__ import annotations

import math
import os
import pickle

from ..errors import CheckpointError


def safe_torch_load(source, what: str | None = None):
    """torch.load that never runs code from the file (weights_only=True, explicitly); one-line errors."""
    import torch

    name = what or (source if isinstance(source, str) else "checkpoint data")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: file not found")
    except IsADirectoryError:
        raise CheckpointError(f"{name}: is a folder; expected a torch file")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name}: refused to load: it needs code or objects that weights-only loading does not "
                              f"build ({first[:200]})")
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({first[:200]})")


class MetadataUnpickler(pickle.Unpickler):
    """Builds only what torch.distributed.checkpoint writes into ``.metadata``: its metadata dataclasses and
    enums, torch.Size, dtypes, layouts (by name), memory formats and pathlib paths. Anything else (functions,
    os.system, ...) is refused."""

    # by name: a module re-exports more (planners, readers, writers) than its metadata records
    CLASSES = {"torch.distributed.checkpoint.metadata": ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                                         "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                                         "StorageMeta", "_MEM_FORMAT_ENCODING"),
               "torch.distributed.checkpoint.filesystem": ("_StorageInfo",)}

    def find_class(self, module: str, name: str):
        import torch

        if name in self.CLASSES.get(module, ()):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                           torch.memory_format)):
            return getattr(torch, name)
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        if (module, name) == ("torch.serialization", "_get_layout"):     # name → torch layout, a lookup
            return torch.serialization._get_layout
        if (module, name) in (("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")):
            import pathlib
            return getattr(pathlib, name)                              # the storage file names
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in checkpoint metadata")


def check_metadata_bounds(meta_path: str, metadata) -> None:
    """A checkpoint is the files inside its folder: every storage item must name a plain file name there, and
    no tensor may declare more bytes than the folder's data files hold (a planted size would otherwise make the
    load allocate it)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = os.path.dirname(meta_path)
    storage = getattr(metadata, "storage_data", None) or {}
    for index, info in storage.items():
        rel = str(getattr(info, "relative_path", ""))
        if not rel or os.path.basename(rel) != rel or rel in (".", ".."):
            raise CheckpointError(f"{meta_path}: refused: item {getattr(index, 'fqn', index)} names the file {rel!r}, "
                                  f"which is not a file inside the checkpoint folder")
    held = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f != ".metadata")
    for fqn, item in (getattr(metadata, "state_dict_metadata", None) or {}).items():
        if isinstance(item, TensorStorageMetadata):
            declared = math.prod(item.size) * item.properties.dtype.itemsize
            if declared > held:
                raise CheckpointError(f"{meta_path}: refused: {fqn} declares {declared} bytes, the checkpoint's data "
                                      f"files hold {held}")


def dcp_reader_and_planner(path: str):
    """A FileSystemReader whose metadata is read by ``MetadataUnpickler`` and a load planner whose byte
    items load with weights_only=True — torch's defaults unpickle both without restriction."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as fh:
                try:
                    metadata = MetadataUnpickler(fh).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
                    raise CheckpointError(f"{meta_path}: refused: {exc}")
            check_metadata_bounds(meta_path, metadata)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            obj = safe_torch_load(value, f"{path}: item {read_item.dest_index.fqn}")
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeReader(path), SafePlanner()


def safe_deepspeed_engine(engine) -> None:
    """Make a DeepSpeed engine read its checkpoint files with weights_only=True (its stock engine does not)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if not isinstance(current, TorchCheckpointEngine):
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(current).__name__}")

    class WeightsOnlyEngine(type(current)):
        def load(self, path, map_location=None):
            return weights_only_deepspeed_load(path)

    current.__class__ = WeightsOnlyEngine      # same state and save path; only loading changes


def weights_only_deepspeed_load(path: str):
    import torch

    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return safe_torch_load(path)


def deepspeed_safe_globals() -> list:
    """Plain-data classes DeepSpeed writes into its checkpoint dicts (enums and config records, no code)."""
    found = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        found.append(LossScaler)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        found.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address
        found.append(fragment_address)
    except ImportError:
        pass
    return found
