"""Products and softmax through oneDNN (`vit_jax.native.onednn`): every layout the models hand it, the fused
epilogues (bias, activations, scale) and the softmax against float64 NumPy / SciPy, and whole models against XLA's
own computations (values and gradients, and inference with the epilogues fused)."""

import ctypes
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from vit_jax.models import create_model
from vit_jax.native import onednn
from vit_jax.xla_flags import DEFAULTS

pytestmark = pytest.mark.skipif(not onednn.usable(), reason="oneDNN is not installed here")
# bf16 products are oneDNN's only on processors with bf16 instructions (`onednn.bf16_products`)
_WITH_BF16 = pytest.mark.skipif(not onednn.bf16_products(), reason="no bf16 instructions: bf16 products are XLA's")


def bf16(*values):
    """A parameter set with bf16 products: skipped where oneDNN leaves them to XLA."""
    return pytest.param(*values, marks=_WITH_BF16)


LAYOUTS = [
    ("mk,kn->mn", (37, 24), (24, 19)),  # a dense layer
    ("mn,kn->mk", (37, 19), (24, 19)),  # its input gradient
    ("mk,mn->kn", (37, 24), (37, 19)),  # its weight gradient: contracts a leading axis
    ("bld,dhk->blhk", (2, 5, 24), (24, 3, 8)),  # the attention projections
    ("bqhd,bkhd->bhqk", (2, 5, 3, 8), (2, 7, 3, 8)),  # attention logits, heads strided
    ("bhqk,bkhd->bqhd", (2, 3, 5, 7), (2, 7, 3, 8)),  # weighted values, written back strided
    ("bqhd,bhqk->bkhd", (2, 5, 3, 8), (2, 3, 5, 7)),  # value gradient: a transposed result, computed swapped
    ("bhqk,bqhd->bkhd", (2, 3, 5, 7), (2, 5, 3, 8)),  # key gradient
]


@pytest.mark.parametrize("dtype", [bf16(jnp.bfloat16), jnp.float32])
@pytest.mark.parametrize("spec, a_shape, b_shape", LAYOUTS)
def test_einsum_is_numpys_for_every_layout(rng, spec, a_shape, b_shape, dtype):
    a, b = (jnp.asarray(rng.standard_normal(s), dtype) for s in (a_shape, b_shape))
    got = jax.jit(lambda a, b: onednn.einsum(spec, a, b, jnp.float32))(a, b)
    expected = np.einsum(spec, np.asarray(a, np.float64), np.asarray(b, np.float64))
    assert got.shape == expected.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype, out_dtype", [bf16(jnp.bfloat16, jnp.bfloat16), bf16(jnp.bfloat16, jnp.float32),
                                               (jnp.float32, jnp.float32)])
@pytest.mark.parametrize("spec, a_shape, b_shape", [
    ("tk,tn->kn", (1000, 40), (1000, 24)),  # a weight gradient over many tokens: cut along the tokens
    ("t,tn->n", (1000,), (1000, 24)),  # a bias gradient: one row, cut along the tokens too
])
def test_products_cut_along_the_contraction_sum_every_chunk_once(rng, spec, a_shape, b_shape, dtype, out_dtype):
    """Such products are summed from float32 partials, one per chunk of the tokens, and rounded once: the chunks'
    boundaries (1,000 = 336 + 336 + 328) must neither drop nor repeat a token, and the scale applies once."""
    a, b = (jnp.asarray(rng.standard_normal(s), dtype) for s in (a_shape, b_shape))
    got = jax.jit(lambda a, b: onednn.einsum(spec, a, b, out_dtype, scale=0.5))(a, b)
    expected = 0.5 * np.einsum(spec, np.asarray(a, np.float64), np.asarray(b, np.float64))
    rounding = 2.0**-8 if out_dtype == jnp.bfloat16 else 1e-5  # bf16: half an ulp; float32: its accumulation
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rounding,
                               atol=1e-5 * np.abs(expected).max())


EPILOGUES = {  # float64 references
    None: lambda h: h,
    "gelu_erf": lambda h: h * 0.5 * (1.0 + special.erf(h / np.sqrt(2.0))),
    "gelu_tanh": lambda h: 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h**3))),
    "quick_gelu": lambda h: h * special.expit(1.702 * h),
    "silu": lambda h: h * special.expit(h),
}


@pytest.mark.parametrize("dtype", [bf16(jnp.bfloat16), jnp.float32])
@pytest.mark.parametrize("activation", list(EPILOGUES))
def test_bias_and_activation_applied_to_the_accumulator(rng, activation, dtype):
    x, w, bias = (jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), dtype) for s in ((37, 24), (24, 19), (19,)))
    got = jax.jit(lambda x, w, b: onednn.einsum("mk,kn->mn", x, w, dtype, bias=b, activation=activation))(x, w, bias)
    h = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(bias, np.float64)
    expected = EPILOGUES[activation](h)
    rounding = 2.0**-8 if dtype == jnp.bfloat16 else 1e-6  # one rounding of the result (bf16: half an ulp)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rounding, atol=1e-6)
    with pytest.raises(ValueError, match="'relu'"):
        onednn.einsum("mk,kn->mn", x, w, dtype, bias=bias, activation="relu")


@_WITH_BF16  # bf16 operands in both
@pytest.mark.parametrize("residual_dtype, out_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.float32)])
def test_residual_added_on_the_accumulator(rng, residual_dtype, out_dtype):
    """`product + bias + residual` rounded once: exact but for that rounding (a bf16 product rounded, then added and
    rounded again, is off by up to two units)."""
    x, w = jnp.asarray(rng.standard_normal((37, 24)), jnp.bfloat16), jnp.asarray(rng.standard_normal((24, 19)), jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(19), jnp.bfloat16)
    residual = jnp.asarray(rng.standard_normal((37, 19)) * 8, residual_dtype)
    got = jax.jit(lambda *args: onednn.einsum("mk,kn->mn", *args[:2], out_dtype, bias=args[2], residual=args[3]))(
        x, w, bias, residual)
    assert got.dtype == out_dtype
    expected = (np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(bias, np.float64)
                + np.asarray(residual, np.float64))
    rounding = 2.0**-8 if out_dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rounding, atol=1e-6)
    with pytest.raises(ValueError, match=r"residual must have the product's shape \(37, 19\); got \(19,\)"):
        onednn.einsum("mk,kn->mn", x, w, out_dtype, bias=bias, residual=bias)


@pytest.mark.parametrize("dtype, out_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.float32),
                                              (jnp.float32, jnp.bfloat16)])
def test_layer_norm_normalises_each_row(rng, dtype, out_dtype):
    x = rng.standard_normal((3, 5, 192)) * 3 + 1
    scale, shift = rng.standard_normal(192), rng.standard_normal(192)
    got = jax.jit(lambda *args: onednn.layer_norm(*args, 1e-6, out_dtype))(
        jnp.asarray(x, dtype), jnp.asarray(scale, jnp.float32), jnp.asarray(shift, jnp.float32))
    if got is None:  # declined: only where oneDNN has no optimised kernel for it (AVX2 has none writing bf16)
        types = [onednn._DNNL_TYPES[jnp.dtype(t).name] for t in (dtype, out_dtype)]
        key = (onednn._LAYER_NORM, 15, 192, *types, int(np.float32(1e-6).view(np.int32)))
        assert not onednn.kernel(key).startswith(onednn._FAST)
        pytest.skip(f"oneDNN's LayerNorm here: {onednn.kernel(key) or 'none'}; XLA computes it")
    assert got.dtype == out_dtype
    x = np.asarray(jnp.asarray(x, dtype), np.float64)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * scale + shift
    rounding = 2.0**-8 if out_dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rounding, atol=rounding)


@_WITH_BF16
def test_scale_applied_to_the_accumulator(rng):
    q, k = (jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.bfloat16) for _ in range(2))
    got = jax.jit(lambda q, k: onednn.einsum("bqhd,bkhd->bhqk", q, k, jnp.float32, scale=0.3))(q, k)
    expected = 0.3 * np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_is_the_normalised_exponential(rng, out_dtype):
    logits = rng.standard_normal((2, 3, 5, 197)) * 4
    logits[0, 0, 0, 7:] = np.finfo(np.float32).min  # a masked row: all weight on its first keys
    got = jax.jit(lambda x: onednn.softmax(x, out_dtype))(jnp.asarray(logits, jnp.float32))
    assert got.dtype == out_dtype
    expected = special.softmax(logits, axis=-1)
    rounding = 2.0**-8 if out_dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rounding, atol=1e-7)


@pytest.mark.parametrize("dtype", [bf16(jnp.bfloat16), jnp.float32])
@pytest.mark.parametrize("n, m, heads, d, e", [(7, 5, 3, 8, 8), (500, 300, 2, 8, 4)])  # the second: 3 row blocks
def test_fused_attention_is_the_three_primitives_apart(rng, dtype, n, m, heads, d, e):
    """softmax(scale q k^T) v in one call, a block of query rows at a time, against float64 NumPy / SciPy, and the
    same bits as the logits' product, the softmax and the values' product as separate calls where oneDNN's
    products are brgemm ones (AVX-512: how the rows are cut does not change a result's sums; AVX2's gemm kernels
    block the contraction by the rows' count: there, equal to rounding)."""
    from vit_jax.models.mixed_precision import mixed_einsum
    from vit_jax.models.softmax import softmax

    q, k = (jnp.asarray(rng.standard_normal((2, length, heads, d)) * 2, dtype) for length in (n, m))
    v = jnp.asarray(rng.standard_normal((2, m, heads, e)), dtype)
    assert onednn._attention_rows(n, heads, m) == (n if n < 100 else 208)  # 131,072 logits / (2 x 300), by 16

    def apart(q, k, v):
        weights = softmax(mixed_einsum("bqhd,bkhd->bhqk", q, k, jnp.float32, 0.3), dtype)
        return mixed_einsum("bhqk,bkhd->bqhd", weights, v)

    fused = jax.jit(lambda q, k, v: onednn.attention(q, k, v, 0.3))(q, k, v)
    assert fused.dtype == dtype and fused.shape == (2, n, heads, e)
    separate = np.asarray(jax.jit(apart)(q, k, v), np.float32)
    if onednn.dense_kernel(64, 64, 64, dtype).startswith("brg"):
        np.testing.assert_array_equal(np.asarray(fused, np.float32), separate)
    else:
        np.testing.assert_allclose(np.asarray(fused, np.float32), separate, rtol=1e-5, atol=1e-6)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    weights = special.softmax(0.3 * np.einsum("bqhd,bkhd->bhqk", q64, k64), axis=-1)
    expected = np.einsum("bhqk,bkhd->bqhd", weights, v64)
    rounding = 2.0**-7 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(fused, np.float64), expected, rtol=0, atol=rounding * np.abs(v64).max())


def test_einsum_declines_what_it_cannot_read_in_place(rng):
    a = jnp.ones((4, 6), jnp.float32)
    assert onednn.einsum("mk,kn->mn", a.astype(jnp.float16), a.T.astype(jnp.float16), jnp.float32) is None
    assert onednn.einsum("mk,k->m", a, a[0], jnp.float32) is not None  # a vector: one free side of size 1
    assert onednn.einsum("mkk,kn->mn", jnp.ones((4, 6, 6)), a.T, jnp.float32) is None  # a diagonal


def _tiny(dtype):
    return create_model("Ti/4", num_classes=5, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, dtype=dtype)


@pytest.mark.parametrize("dtype, tolerance", [(None, 1e-4), bf16(jnp.bfloat16, 0.05)])
def test_a_model_on_onednn_matches_xlas_products(rng, dtype, tolerance):
    """The same model, loss and gradients with oneDNN's products and with XLA's (oneDNN switched off); and its
    inference, where the dense layers' bias and GELU are oneDNN's epilogues (differentiated, they are not: the
    backward pass needs the pre-activation)."""
    model = _tiny(dtype)
    images = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, 4))
    params = model.init(jax.random.key(0), images[:1], train=False)["params"]

    def loss(p):
        logits = model.apply({"params": p}, images, train=False).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    text = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
    fused_activation = re.compile(r"activation = [1-9]\d* : i64")  # a product with the GELU as its epilogue
    assert onednn.MATMUL in text and onednn.SOFTMAX in text and not fused_activation.search(text)
    library = jax.jit(jax.value_and_grad(loss))(params)
    infer = jax.jit(lambda p: model.apply({"params": p}, images, train=False))
    inferred = infer.lower(params).as_text()
    with_residual = re.compile(onednn.MATMUL + r".*tensor<\d+x\d+x[a-z0-9]+>\) -> ")  # a 4th operand, not 0 x ...
    assert fused_activation.search(inferred) and onednn.ATTENTION in inferred and onednn.LAYER_NORM in inferred
    assert len(with_residual.findall(inferred)) == 2  # the attention's output projection and the MLP's last layer
    # differentiated: the primitives apart, whose intermediates the backward pass needs
    assert not {onednn.ATTENTION, onednn.LAYER_NORM} & set(re.findall(r"vit_jax_\w+", text))
    assert not with_residual.search(text)
    fused = infer(params)
    with onednn.xla_products():
        text = jax.jit(jax.value_and_grad(lambda p: loss(p))).lower(params).as_text()
        xla = jax.jit(jax.value_and_grad(lambda p: loss(p)))(params)
        unfused = jax.jit(lambda p: model.apply({"params": p}, images, train=False))(params)
    assert onednn.MATMUL not in text and onednn.SOFTMAX not in text
    assert abs(float(library[0]) - float(xla[0])) <= tolerance * abs(float(xla[0]))
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(unfused, np.float32), rtol=0,
                               atol=tolerance * float(jnp.abs(unfused).max()))
    for path, g in jax.tree_util.tree_leaves_with_path(xla[1]):
        got = dict(jax.tree_util.tree_leaves_with_path(library[1]))[path]
        scale = float(jnp.abs(g).max()) + 1e-6
        assert float(jnp.abs(got - g).max()) <= tolerance * scale, jax.tree_util.keystr(path)


def test_products_oneDNN_has_only_a_reference_kernel_for_stay_with_xla():
    """The kernel is asked for at trace time: a result written transposed gets only oneDNN's reference kernel
    (thousands of times slower), so `einsum` computes it swapped, and would decline it otherwise."""
    dense, f32, plain = [48, 48, 6, 1], 3, [0, 0, int(np.float32(1).view(np.int32)), 0]  # no bias, activation,
    # scale or residual
    product = [onednn._MATMUL, 1, 1, 8, 4, 6, 32, 32, 4, 1, 24, 24, 6, 1]
    fast = onednn.kernel(tuple(product + dense + [f32] * 3 + plain))
    transposed = onednn.kernel(tuple(product + [48, 48, 1, 8] + [f32] * 3 + plain))
    assert fast.startswith(onednn._FAST) and transposed.startswith("ref")
    a, b = jnp.ones((4, 8)), jnp.ones((4, 6))
    assert onednn.einsum("km,kn->nm", a, b, jnp.float32, swapped=True) is None  # the transposed form itself
    np.testing.assert_array_equal(onednn.einsum("km,kn->nm", a, b, jnp.float32), np.full((6, 8), 4.0))


def _kernels_that_ran(capfd, computations) -> set[str]:
    """The kernels oneDNN's own verbose log names for the products and softmaxes each jitted computation ran."""
    library = ctypes.CDLL(onednn.library_path())  # the loaded library itself (dlopen of the same file)
    library.dnnl_set_verbose(2)
    try:
        for computation in computations:
            jax.block_until_ready(jax.jit(computation)())
    finally:
        library.dnnl_set_verbose(0)
    return {line.split(",")[4] for line in capfd.readouterr().out.splitlines()
            if re.match(r"onednn_verbose,exec,cpu,(matmul|softmax),", line)}


@pytest.mark.parametrize("dtype", [bf16(jnp.bfloat16), jnp.float32])
def test_every_chunk_runs_the_kernel_asked_for_the_whole_product(rng, monkeypatch, capfd, dtype):
    """Each product runs in chunks over XLA's threads; each chunk must get the kernel oneDNN gave the whole product at
    trace time. Row chunks once kept the whole product's strides on their size-1 batch dimensions and weight
    gradients' row chunks were strided sub-matrices: oneDNN then ran its slower gemm kernels instead of brgemm.
    The kernels that ran are read from oneDNN's own verbose log."""
    asked = []
    kernel = onednn.kernel
    monkeypatch.setattr(onednn, "kernel", lambda key: asked.append(kernel(key)) or asked[-1])
    x, g = (jnp.asarray(rng.standard_normal(s), dtype) for s in ((1000, 64), (1000, 96)))
    w = jnp.asarray(rng.standard_normal((64, 96)), dtype)
    ran = _kernels_that_ran(capfd, [lambda a=a, b=b, spec=spec: onednn.einsum(spec, a, b, dtype)
                                    for spec, a, b in (("mk,kn->mn", x, w), ("mn,kn->mk", g, w), ("mk,mn->kn", x, g))])
    assert len(asked) == 3, asked
    assert onednn.dense_kernel(1000, 64, 96, dtype) == asked[0]  # the dense layer's, as benchmarks record it
    if not all(name.startswith(onednn._FAST) for name in asked):
        pytest.skip(f"oneDNN has only {set(asked)} for these products on this CPU: XLA computes them")
    assert ran == set(asked), (ran, asked)


@pytest.mark.parametrize("dtype", [bf16(jnp.bfloat16), jnp.float32])
def test_fused_attention_runs_the_kernels_asked_for(rng, monkeypatch, capfd, dtype):
    """The fused attention's products take all heads of a block of rows, a dense slice (one head's is strided:
    oneDNN then runs its slower gemm kernels, not the brgemm ones it names for the product asked)."""
    asked = []
    kernel = onednn.kernel
    monkeypatch.setattr(onednn, "kernel", lambda key: asked.append(kernel(key)) or asked[-1])
    q, k, v = (jnp.asarray(rng.standard_normal((2, 197, 3, 64)), dtype) for _ in range(3))
    ran = _kernels_that_ran(capfd, [lambda: onednn.attention(q, k, v, 0.125)])
    assert len(asked) == 3, asked
    if not all(name.startswith(onednn._FAST) for name in asked):
        pytest.skip(f"oneDNN has only {set(asked)} for these primitives on this CPU: XLA computes them")
    assert ran == set(asked), (ran, asked)


# A processor without bf16 instructions, as oneDNN sees one when capped below them: its bf16 products are emulated
# (`gemm:jit:bf16`, a third of its float32 speed), so they stay XLA's, with XLA's bf16 flags; float32 stays oneDNN's.
WITHOUT_BF16_INSTRUCTIONS = """
import json
from vit_jax import xla_flags
from vit_jax.native import onednn
result = {"bf16_products": onednn.bf16_products(), "bf16_flags": list(xla_flags.default_xla_flags("bfloat16")),
          "f32_flags": list(xla_flags.default_xla_flags("float32"))}
import jax, jax.numpy as jnp
a, b = jnp.ones((64, 32), jnp.bfloat16), jnp.ones((32, 16), jnp.bfloat16)
result["bf16"] = onednn.dense_kernel(64, 32, 16, "bfloat16") if onednn.einsum("mk,kn->mn", a, b, jnp.bfloat16) is None \
    else "computed"
result["f32"] = onednn.dense_kernel(64, 32, 16, "float32")
result["attention_bf16"] = onednn.attention(*(jnp.ones((1, 8, 2, 16), jnp.bfloat16),) * 3, 0.25) is None
print(json.dumps(result))
"""


def test_bf16_products_stay_xlas_on_a_processor_without_bf16_instructions():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}  # AVX-512 without BF16: Skylake, Cascade Lake, Ice Lake
    done = subprocess.run([sys.executable, "-c", WITHOUT_BF16_INSTRUCTIONS], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"bf16_products": False, "bf16_flags": list(DEFAULTS["bfloat16"]),
                      "f32_flags": list(DEFAULTS["float32"]), "bf16": None, "f32": result["f32"],
                      "attention_bf16": True}
    assert result["f32"].startswith(onednn._FAST)  # brgemm with AVX-512, gemm:jit with AVX2
