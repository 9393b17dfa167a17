"""vit_jax's side of a benchmark cell: the real train step (`vit_jax.steps.make_train_step`, AdamW, clipping) or
the inference forward pass, jitted over all local devices, timed after compilation."""

from __future__ import annotations

import dataclasses
import resource
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.benchmark.workload import Workload, matmul_flops_per_second, time_steps, utilisation
from vit_jax.config import base_config
from vit_jax.host_memory import keep_freed_memory
from vit_jax.models import create_model
from vit_jax.models.vit import VisionTransformer
from vit_jax.native import onednn
from vit_jax.optim import learning_rate_schedule, make_optimizer
from vit_jax.sharding import batch_sharding, make_mesh, replicated
from vit_jax.steps import TrainState, make_train_step

NUM_CLASSES = 1000


def matmul_ceiling(dtype: str, size: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul by the products the model uses in this process (oneDNN's where
    `vit_jax.native.onednn` is in use, else XLA's): float32, or bf16 operands with float32 accumulation."""
    operand = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((size, size)), operand) for _ in range(2))

    def dot(a: jax.Array, b: jax.Array) -> jax.Array:
        library = onednn.einsum("mk,kn->mn", a, b, jnp.float32)
        return library if library is not None else jnp.dot(a, b, preferred_element_type=jnp.float32)

    product = jax.jit(dot)
    return matmul_flops_per_second(lambda: product(a, b).block_until_ready(), size, repeats)


def build_model(workload: Workload, scan: bool | None = None) -> VisionTransformer:
    dtype = jnp.bfloat16 if workload.dtype == "bf16" else None
    return create_model(workload.variant, num_classes=NUM_CLASSES, dtype=dtype,
                        scan=workload.scan if scan is None else scan, attention_impl=workload.attention_impl,
                        matmul=workload.matmul)


def _functions(model: VisionTransformer, mode: str, images: Any, labels: Any, mesh: Any,
               abstract: bool = False) -> tuple[Any, tuple]:
    """The jitted function of `mode` and its arguments; `abstract`: the state's shapes only (enough to lower it,
    without compiling the initialisation)."""
    init = jax.jit(lambda: model.init(jax.random.key(0), images[:1], train=False)["params"],
                   out_shardings=replicated(mesh))
    params = jax.eval_shape(init) if abstract else init()
    if mode == "infer":
        forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False), out_shardings=replicated(mesh))
        return forward, (params, images)
    config = base_config()
    tx = make_optimizer(config.optimizer, 1000)
    step = make_train_step(model, tx, learning_rate_schedule(config.optimizer, 1000),
                           dropout_key=jax.random.key(1), mesh=mesh)
    opt_init = jax.jit(tx.init)
    opt_state = jax.eval_shape(opt_init, params) if abstract else opt_init(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    return jax.jit(step, donate_argnums=0), (state, {"image": images, "label": labels})


def step_flops(workload: Workload, images: Any, labels: Any, mesh: Any) -> float:
    """FLOPs of one step by XLA's cost analysis, of the unscanned model with XLA's products (a scanned body is
    counted once, a custom call's products, oneDNN's or the BLAS's, not at all)."""
    xla = dataclasses.replace(workload, matmul="xla")
    with onednn.xla_products():
        function, args = _functions(build_model(xla, scan=False), workload.mode, images, labels, mesh, abstract=True)
        return float(function.lower(*args).cost_analysis()["flops"])


def run(workload: Workload) -> dict[str, Any]:
    mesh = make_mesh((("data", -1),))
    rng = np.random.default_rng(0)
    shape = (workload.batch_size, workload.image_size, workload.image_size, 3)
    images = jax.device_put(rng.uniform(-1, 1, shape).astype(np.float32), batch_sharding(mesh))
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, workload.batch_size).astype(np.int32),
                            batch_sharding(mesh))
    model = build_model(workload)
    function, args = _functions(model, workload.mode, images, labels, mesh)
    compiled: list[Any] = []
    state = list(args)

    def compile_and_run() -> None:
        compiled.append(function.lower(*state).compile())
        memory = compiled[0].memory_analysis()
        # as the train loop does; this loop waits for each step, so two buffers can be allocated at once
        keep_freed_memory(memory.temp_size_in_bytes if memory else 0, 2, jax.default_backend())
        one_step()

    def one_step() -> None:
        out = compiled[0](*state)
        if workload.mode == "train":
            state[0] = out[0]
        jax.block_until_ready(out)

    times = time_steps(compile_and_run, one_step, workload.steps, workload.warmup)
    result = times.summary(workload.batch_size)
    memory = compiled[0].memory_analysis()
    result["xla_peak_bytes"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                + memory.temp_size_in_bytes - memory.alias_size_in_bytes) if memory else None
    stats = jax.local_devices()[0].memory_stats() or {}
    result["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    result["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    flops = step_flops(workload, images, labels, mesh)
    ceiling = matmul_ceiling(workload.dtype, workload.ceiling_size)
    result.update(utilisation(flops, result["step_seconds_median"], ceiling))
    result["device"] = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
    # the kernel of the MLP's first product on a chunk of 800 tokens: on a processor with AMX, whether it is used
    result["onednn_kernel"] = (onednn.dense_kernel(800, model.hidden_size, model.mlp_dim, model.dtype or jnp.float32)
                               if workload.matmul == "xla" else None)
    return result
