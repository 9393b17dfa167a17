"""timm's side of a benchmark cell: the same-size `VisionTransformer` in PyTorch, float32 or bf16 autocast,
trained with AdamW and global-norm clipping like vit_jax's default step. Needs the `bench` extra."""

from __future__ import annotations

import contextlib
import resource
from typing import Any

from vit_jax.benchmark.workload import Workload, matmul_flops_per_second, time_steps, utilisation
from vit_jax.models import create_model
from vit_jax.timm_compat import import_timm

NUM_CLASSES = 1000


def timm_model(workload: Workload) -> Any:
    """timm's ViT with vit_jax's variant's sizes (class token, learned position embeddings, token head)."""
    timm = import_timm()
    ours = create_model(workload.variant, num_classes=NUM_CLASSES)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=workload.image_size, patch_size=ours.patch_size, embed_dim=ours.hidden_size,
        depth=ours.num_layers, num_heads=ours.num_heads, mlp_ratio=ours.mlp_dim / ours.hidden_size,
        num_classes=NUM_CLASSES)


def matmul_ceiling(dtype: str, size: int, repeats: int = 10) -> float:
    import torch

    operand = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=operand), torch.randn(size, size, dtype=operand)
    return matmul_flops_per_second(lambda: a @ b, size, repeats)


def run(workload: Workload) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = timm_model(workload)
    images = torch.rand(workload.batch_size, 3, workload.image_size, workload.image_size) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (workload.batch_size,))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if workload.dtype == "bf16" \
        else contextlib.nullcontext
    if workload.mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(images)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    result = time_steps(step, step, workload.steps, workload.warmup).summary(workload.batch_size)
    result["compile_seconds"] = None  # eager: the first step is not a compilation
    result["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ceiling = matmul_ceiling(workload.dtype, workload.ceiling_size)
    result.update(utilisation(workload.flops, result["step_seconds_median"], ceiling))
    result["device"] = f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return result
