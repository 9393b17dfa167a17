"""Linear probe of a checkpoint's representation: logistic regression on frozen features, as CLIP and DINOv2 run it.

    python -m vit_jax.linear_probe --checkpoint=workdirs/digits
    python -m vit_jax.linear_probe --checkpoint=hf-hub:timm/vit_small_patch14_dinov2.lvd142m --dataset=NAME

The representations of the training, validation and test splits are extracted once (`vit_jax.frozen_features`);
a multinomial logistic regression is fitted on the training split for each inverse regularisation strength `C`
(scikit-learn's parametrisation: `C * sum of cross-entropies + |W|^2 / 2`, bias not penalised; DINOv2's grid, 45
values from 1e-6 to 1e5), by L-BFGS in JAX (on the accelerator, whole-batch: ImageNet's 1.28M features fit in a
GPU), each warm-started from the previous; the `C` with the best validation accuracy is the one whose test top-1 and
top-5 are reported. A workdir brings its run's dataset and train / validation / test splits.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import frozen_features

DINOV2_CS = tuple(float(c) for c in 10.0 ** np.linspace(-6, 5, 45))  # dinov2/eval/log_regression.py's C_POWER_RANGE
TOLERANCE = 1e-5  # the largest gradient entry of the mean objective at convergence (float32)
MAX_ITERATIONS = 1000


@dataclasses.dataclass(frozen=True)
class Fit:
    c: float
    kernel: np.ndarray  # (D, classes)
    bias: np.ndarray  # (classes,)
    iterations: int
    gradient: float  # the largest gradient entry where it stopped

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.kernel + self.bias


def _objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, penalty: jax.Array) -> jax.Array:
    """Mean cross-entropy plus `penalty / 2 * |W|^2`: scikit-learn's objective divided by `C * N`."""
    # full float32 products: TF32 (GPUs) or bfloat16 passes (TPUs) would leave L-BFGS short of its tolerance
    logits = jnp.matmul(x, params["kernel"], precision=jax.lax.Precision.HIGHEST) + params["bias"]
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(nll) + 0.5 * penalty * jnp.sum(params["kernel"] ** 2)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _minimise(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, c: jax.Array, tolerance: float,
              max_iterations: int) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    loss = functools.partial(_objective, x=x, y=y, penalty=1.0 / (c * x.shape[0]))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def largest_gradient(state) -> jax.Array:
        return optax.tree.max(jax.tree.map(jnp.abs, optax.tree.get(state, "grad")))

    def going(carry) -> jax.Array:
        _, state = carry
        count = optax.tree.get(state, "count")
        return (count == 0) | ((count < max_iterations) & (largest_gradient(state) > tolerance))

    params, state = jax.lax.while_loop(going, step, (params, solver.init(params)))
    return params, optax.tree.get(state, "count"), largest_gradient(state)


def fit_logistic_regression(features: np.ndarray | jax.Array, labels: np.ndarray | jax.Array, c: float,
                            num_classes: int, start: Fit | None = None, tolerance: float = TOLERANCE,
                            max_iterations: int = MAX_ITERATIONS) -> Fit:
    """scikit-learn's `LogisticRegression(C=c)` (multinomial, L2, intercept), fitted by L-BFGS from `start` (a fit
    at a nearby C) or from zeros."""
    if not c > 0:
        raise ValueError(f"C={c}: expected a positive inverse regularisation strength")
    params = ({"kernel": jnp.zeros((features.shape[1], num_classes)), "bias": jnp.zeros(num_classes)} if start is None
              else {"kernel": jnp.asarray(start.kernel), "bias": jnp.asarray(start.bias)})
    params, iterations, gradient = _minimise(params, jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32),
                                             jnp.float32(c), tolerance, max_iterations)
    return Fit(float(c), np.asarray(params["kernel"]), np.asarray(params["bias"]), int(iterations), float(gradient))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The share of rows whose label is among the `k` largest logits (ties to the lower class)."""
    return float(np.mean(np.asarray(frozen_features.label_rank(logits, labels)) < k))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    best: Fit
    validation: list[tuple[float, float]]  # (C, validation top-1) for each C tried
    top1: float
    top5: float


def linear_probe(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], num_classes: int, cs: Sequence[float] = DINOV2_CS
                 ) -> ProbeResult:
    """A fit per C in increasing order (each warm-started from the last), the one with the best validation accuracy
    (the smallest C among equals: the most regularised) evaluated on the test split."""
    fits, scores, fit = [], [], None
    train = (jnp.asarray(train[0], jnp.float32), jnp.asarray(train[1], jnp.int32))  # on the device once, for every C
    for c in sorted(cs):
        fit = fit_logistic_regression(*train, c, num_classes, start=fit)
        fits.append(fit)
        scores.append(top_k_accuracy(fit.logits(validation[0]), validation[1], 1))
    best = fits[int(np.argmax(scores))]
    logits = best.logits(test[0])
    return ProbeResult(best, [(f.c, s) for f, s in zip(fits, scores)], top_k_accuracy(logits, test[1], 1),
                       top_k_accuracy(logits, test[1], 5))


def check_cs(cs: Sequence[float]) -> None:
    if not cs or not all(c > 0 for c in cs):
        raise ValueError(f"--C {' '.join(map(str, cs))}: expected positive numbers")


def main(argv: Sequence[str] | None = None) -> int:

    parser = frozen_features.argument_parser("python -m vit_jax.linear_probe", __doc__, {
        "train": "the split fitted (default: train, or the run's)",
        "eval": "the split that chooses C (default: validation, or the run's eval_split)",
        "test": "the split reported (default: test, or the run's)"})
    parser.add_argument("--C", type=float, nargs="+", default=list(DINOV2_CS), dest="cs", metavar="C",
                        help="inverse regularisation strengths to try (default: DINOv2's 45, 1e-6 to 1e5)")
    args = parser.parse_args(argv)
    prepared = frozen_features.prepare(args, {"train": "train", "eval": "validation", "test": "test"},
                                       lambda data: check_cs(args.cs))
    if prepared is None:
        return 2
    data, trained = prepared
    features = frozen_features.split_representations(trained, data, args.batch_size, args.dtype, args.data_threads)
    result = linear_probe(features["train"], features["eval"], features["test"], data.num_classes, args.cs)
    best = result.best
    lines = [f"linear probe on {data.dataset} ({data.splits['test']}: {data.sizes['test']:,} {data.examples}), "
             f"{trained.source}'s {best.kernel.shape[0]}-wide representation, fitted on {data.splits['train']} "
             f"({data.sizes['train']:,}), C chosen on {data.splits['eval']} ({data.sizes['eval']:,})",
             f"C = {best.c:.3g} (validation top-1 {max(s for _, s in result.validation):.2%}; "
             f"{best.iterations} L-BFGS iterations): test top-1 {result.top1:.2%}, top-5 {result.top5:.2%}"]
    frozen_features.report(args, data, features, lines, {
        "width": int(best.kernel.shape[0]), "c": best.c, "iterations": best.iterations, "top1": result.top1,
        "top5": result.top5, "validation": [{"c": c, "top1": s} for c, s in result.validation]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
