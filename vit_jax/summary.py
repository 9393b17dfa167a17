"""Model summary: parameters per top-level module, tokens per image and GFLOPs per image, without running it.

    python -m vit_jax.summary B/16 --image-size 224 --num-classes 1000 [--set posemb=sincos2d ...]
    python -m vit_jax.summary Ti/16 S/16 B/16 --markdown      # one table row per variant
    python -m vit_jax.summary --checkpoint=hf-hub:timm/vit_small_patch14_dinov2.lvd142m [--image-size 448]

Parameters come from `jax.eval_shape` of `init` and FLOPs from XLA's cost analysis of the lowered forward pass, so
nothing is materialised or executed: even ViT-e summarises in seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.image_size_flag import add_image_size_option, split_image_size
from vit_jax.models import create_model
from vit_jax.models.encoder_options import blocks_alike
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.vit import VisionTransformer, token_grid
from vit_jax.native import onednn


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    name: str
    image_shape: tuple[int, int, int]
    params_per_module: dict[str, int]  # top-level modules, and the encoder's children as "Transformer/<child>"
    grid: tuple[int, int]
    num_prefix: int
    flops_per_image: float

    @property
    def total_params(self) -> int:
        return sum(n for name, n in self.params_per_module.items() if "/" not in name)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens_per_image(self) -> int:
        return self.num_patches + self.num_prefix


def param_shapes(model: VisionTransformer, image_shape: Sequence[int]) -> Any:
    """The parameter tree as `jax.ShapeDtypeStruct`s, for an input of `image_shape` `(H, W, C)`."""
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)["params"]


def count_params(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


# Top-level modules and encoder children in the order data flows through them; anything else goes last.
_DATA_FLOW_ORDER = ("embedding", "cls", "dist", "Transformer", "posembed_input", "encoderblock", "encoder_norm",
                    "MAPHead_0", "fc_norm", "pre_logits", "head", "head_dist")


def _data_flow_key(name: str) -> tuple[int, int, str]:
    base, _, layer = name.partition("_") if name.startswith("encoderblock_") else (name, "", "")
    rank = _DATA_FLOW_ORDER.index(base) if base in _DATA_FLOW_ORDER else len(_DATA_FLOW_ORDER)
    return rank, int(layer) if layer.isdigit() else -1, name


def params_per_module(params: Mapping[str, Any]) -> dict[str, int]:
    """Counts per top-level module, plus the encoder's children (position embeddings, blocks, final norm),
    in data-flow order."""
    counts: dict[str, int] = {}
    for name in sorted(params, key=_data_flow_key):
        counts[name] = count_params(params[name])
        if name == "Transformer":
            for child in sorted(params[name], key=_data_flow_key):
                counts[f"{name}/{child}"] = count_params(params[name][child])
    return counts


def forward_flops(model: VisionTransformer, image_shape: Sequence[int], params: Any = None) -> float:
    """FLOPs of one image's inference forward pass, by XLA's cost analysis (a multiply-add counts as 2).

    Analysed unscanned and with XLA's products: XLA's cost analysis counts a while loop's body once, whatever the
    trip count, and sees no FLOPs in a custom call (oneDNN's products). Where the blocks are alike, a deep model is
    counted from its 1- and 2-block versions (the second block's FLOPs are every further block's), so a 48-block
    model costs two small lowerings. `params`: the unscanned model's parameter shapes, when already at hand.
    """
    model = model.clone(scan=False, remat=False)
    if model.num_layers > 2 and blocks_alike(model):
        heads = model.num_kv_heads[0] if isinstance(model.num_kv_heads, tuple) else model.num_kv_heads
        one, two = (forward_flops(model.clone(num_layers=n, num_kv_heads=heads), image_shape) for n in (1, 2))
        return one + (model.num_layers - 1) * (two - one)
    params = param_shapes(model, image_shape) if params is None else params
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    with onednn.xla_products():
        lowered = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(params, images)
    return float(lowered.cost_analysis()["flops"])


def summarize(model: VisionTransformer, image_shape: Sequence[int], name: str = "ViT") -> ModelSummary:
    image_shape = tuple(image_shape)
    if model.tubelet_size is not None:
        raise ValueError(f"{name} is a video model (tubelet_size={model.tubelet_size!r}); summaries are of "
                         f"image models")
    grid = token_grid(model, image_shape[:2])  # the clear size error, before tracing
    params = param_shapes(model, image_shape)
    return ModelSummary(
        name=name,
        image_shape=image_shape,  # type: ignore[arg-type]
        params_per_module=params_per_module(params),
        grid=grid,
        num_prefix=num_prefix_tokens(model.classifier),
        flops_per_image=forward_flops(model, image_shape, None if model.scan or model.remat else params),
    )


def format_summary(summary: ModelSummary) -> str:
    h, w, c = summary.image_shape
    lines = [f"{summary.name} on {h}x{w}x{c} images", f"{'module':<40}{'parameters':>16}"]
    for module, count in _blocks_folded(summary.params_per_module).items():
        label = "  " + module.split("/", 1)[1] if "/" in module else module  # encoder children indented
        lines.append(f"{label:<40}{count:>16,}")
    gh, gw = summary.grid
    prefix = {0: "", 1: " + 1 class token", 2: " + class and distillation tokens"}[summary.num_prefix]
    lines += [
        f"{'total':<40}{summary.total_params:>16,}",
        f"tokens per image: {summary.tokens_per_image} ({gh}x{gw} patch grid = {summary.num_patches} patches{prefix})",
        f"GFLOPs per image: {summary.flops_per_image / 1e9:.3f} "
        "(forward pass, XLA cost analysis; a multiply-add counts as 2 FLOPs)",
    ]
    return "\n".join(lines)


def markdown_table(summaries: Sequence[ModelSummary]) -> str:
    """One row per model: the table of variants in the README."""
    rows = [
        "| model | image | parameters | tokens per image | GFLOPs per image |",
        "|---|---|---:|---:|---:|",
    ]
    for s in summaries:
        h, w, c = s.image_shape
        rows.append(f"| {s.name} | {h}x{w}x{c} | {s.total_params:,} | {s.tokens_per_image} | "
                    f"{s.flops_per_image / 1e9:.2f} |")
    return "\n".join(rows)


def _blocks_folded(counts: Mapping[str, int]) -> dict[str, int]:
    """`Transformer/encoderblock_0..N-1` folded into one line, so a 48-layer model's summary stays readable."""
    folded: dict[str, int] = {}
    blocks = [name for name in counts if re.fullmatch(r"Transformer/encoderblock_\d+", name)]
    for name, count in counts.items():
        if name in blocks[1:]:
            continue
        if blocks and name == blocks[0]:
            name = f"Transformer/encoderblock_0..{len(blocks) - 1} ({len(blocks)} x {count:,})"
            count *= len(blocks)
        folded[name] = count
    return folded


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value`, the value a Python literal (`8`, `(8, 16)`, `None`, `True`) or else a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value; got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.summary", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT",
                        help="e.g. Ti/16, S/16, B/32, L/16, H/14, S/8x16 (default B/16)")
    parser.add_argument("--checkpoint", default=None,
                        help="instead of variants: the model of a checkpoint (a vit_jax workdir, an .npz file, "
                             "hf-hub:OWNER/NAME, a Hub-layout directory or a .safetensors file), at the image size "
                             "it evaluates at, or --image-size")
    add_image_size_option(parser, "default: 224, or the size a checkpoint evaluates at")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table, one row per variant")
    parser.add_argument("--set", type=parse_override, action="append", default=[], metavar="OPTION=VALUE",
                        help="any create_model option, e.g. --set posemb=sincos2d --set classifier=gap")
    args = parser.parse_args(argv)
    try:  # `--image-size 384 B/16`: the option takes one or two values, and the rest are variants
        args.image_size, swallowed = split_image_size(args.image_size)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    args.variants = [*args.variants, *swallowed]
    if args.channels not in (1, 3) or args.num_classes < 0:
        parser.exit(2, f"error: --channels {args.channels} / --num-classes {args.num_classes}: expected 1 or 3 "
                       f"channels and a class count >= 0\n")
    try:
        summaries = ([_checkpoint_summary(args)] if args.checkpoint is not None else
                     [summarize(create_model(variant, num_classes=args.num_classes, **dict(args.set)),
                                (*(args.image_size or (224, 224)), args.channels), name=f"ViT-{variant}")
                      for variant in args.variants or ["B/16"]])
    except (ValueError, TypeError, FileNotFoundError) as error:  # TypeError: an option create_model does not take
        parser.exit(2, f"error: {error}\n")
    if args.markdown:
        print(markdown_table(summaries))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    return 0


def _checkpoint_summary(args: argparse.Namespace) -> ModelSummary:
    """The summary of `--checkpoint`'s model: its architecture, channels and classes are the checkpoint's own."""
    from vit_jax.checkpoint.trained_model import load_trained_model

    given = [flag for flag, used in (("VARIANT", args.variants), ("--set", args.set),
                                     ("--channels", args.channels != 3), ("--num-classes", args.num_classes != 1000))
             if used]
    if given:
        raise ValueError(f"{', '.join(given)}: not used with --checkpoint, whose model, channels and classes are "
                         f"the checkpoint's own; leave {'it' if len(given) == 1 else 'them'} out")
    # an .npz file without a square table says no image size of its own: the loader asks for --image-size
    trained = load_trained_model(args.checkpoint, image_size=args.image_size)
    return summarize(trained.model, (*trained.image_size, trained.channels), name=trained.source)


if __name__ == "__main__":
    sys.exit(main())
