"""timm and transformers, importable on a CPU-only PyTorch, as independent references (and the benchmark's timm
side).

PyPI's torchvision wheel is built against CUDA PyTorch: on the CPU build its C ops fail to load, and torchvision
then fails at import while registering fake kernels for two ops it never got to define (`torchvision::nms`,
`torchvision::qnms`). timm imports torchvision unconditionally, and transformers' image models import it when it is
installed. Defining those two op schemas first lets the import succeed; the ViT never calls them.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from types import ModuleType


def import_timm() -> ModuleType:
    import torch

    spec = importlib.util.find_spec("torchvision")
    extension = Path(spec.origin).parent / "_C.so" if spec and spec.origin else None
    try:
        if extension is not None and extension.exists():
            ctypes.CDLL(str(extension))
    except OSError:
        if not hasattr(import_timm, "_library"):
            library = torch.library.Library("torchvision", "DEF")
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            import_timm._library = library  # keep the definitions alive
    import timm

    return timm


def import_transformers() -> ModuleType:
    import_timm()  # torchvision's ops first, as for timm
    import transformers

    transformers.logging.set_verbosity_error()  # its save/load progress and config notices
    return transformers
