"""Writes vit_jax/checkpoint/timm_architectures.json: the keyword arguments each timm ViT architecture passes to its
model class, which a Hub `config.json` does not record (its `model_args` are only what the caller added) and
tensors cannot say: the activation (`gelu_tanh` for SigLIP 2), the LayerNorm epsilon, the block type, pooling
details, rotary settings.

    python scripts/timm_architecture_defaults.py   # with the timm version pinned in pyproject.toml's test extra

tests/test_timm_checkpoints.py checks the file against the installed timm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "vit_jax" / "checkpoint" / "timm_architectures.json"
# timm's VisionTransformer, Eva, Beit and NaFlexVit classes: the layouts vit_jax reads
MODULES = ("vision_transformer", "eva", "beit", "naflexvit")


def canonical(key: str, value: Any, timm: Any) -> Any:
    """A JSON value: the activation as 'gelu' / 'gelu_tanh' / 'quick_gelu' / its class name, a norm as its class,
    epsilon and bias, a `functools.partial` as its function's name and keywords, other classes by name."""
    import functools

    import torch

    if key == "act_layer":
        act = timm.layers.get_act_layer(value)()
        if isinstance(act, torch.nn.GELU):
            return "gelu_tanh" if act.approximate == "tanh" else "gelu"
        return {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu", "GELU": "gelu"}.get(type(act).__name__,
                                                                                         type(act).__name__)
    if key.endswith("norm_layer") and value is not None and not isinstance(value, str):
        norm = timm.layers.get_norm_layer(value)(8)
        return {"name": type(norm).__name__, "eps": float(norm.eps), "bias": getattr(norm, "bias", None) is not None}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, functools.partial):  # e.g. SwiGLUPacked: {"name": "GluMlp", "gate_last": false, ...}
        return {"name": value.func.__name__, **{k: canonical(k, v, timm) for k, v in sorted(value.keywords.items())}}
    if isinstance(value, list | tuple):
        return [canonical(key, v, timm) for v in value]
    return getattr(value, "__name__", type(value).__name__)


def architecture_defaults() -> dict[str, dict[str, Any]]:
    """{architecture: its model class's keyword arguments} for every registered ViT, Eva, BEiT and NaFlexVit
    architecture."""
    from vit_jax.timm_compat import import_timm

    timm = import_timm()
    captured: dict[str, dict[str, Any]] = {}

    class Captured(Exception):
        pass

    def capture(variant: str, pretrained: bool = False, **kwargs: Any) -> None:
        captured[variant] = kwargs
        raise Captured

    modules = {name: getattr(timm.models, name) for name in MODULES}
    originals = {name: getattr(m, f"_create_{'eva' if name == 'eva' else name}") for name, m in modules.items()}
    try:
        for name, module in modules.items():
            setattr(module, f"_create_{'eva' if name == 'eva' else name}", capture)
        for module_name in MODULES:
            for arch in timm.list_models(module=module_name):
                try:
                    timm.models.model_entrypoint(arch)(pretrained=False)
                except Captured:
                    pass
    finally:
        for name, module in modules.items():
            setattr(module, f"_create_{'eva' if name == 'eva' else name}", originals[name])
    return {arch: {k: canonical(k, v, timm) for k, v in sorted(_flat(kwargs).items())} for arch, kwargs in
            sorted(captured.items())}


def _flat(kwargs: dict[str, Any]) -> dict[str, Any]:
    """NaFlexVit's `cfg` (a `NaFlexVitCfg`) as the keyword arguments it differs from the class's defaults by (what
    NaFlexVit also takes as keywords; vit_jax.checkpoint.naflex_layout holds the defaults)."""
    import dataclasses

    cfg = kwargs.get("cfg")
    if not dataclasses.is_dataclass(cfg):
        return kwargs
    default = type(cfg)()
    changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if getattr(cfg, f.name) != getattr(default, f.name)}
    return {**changed, **{k: v for k, v in kwargs.items() if k != "cfg"}}


def main() -> int:
    defaults = architecture_defaults()
    OUT.write_text(json.dumps(defaults, indent=0, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(defaults)} architectures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
