import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax.param_paths import path_string
from vit_jax.sharding import (
    ShardingError,
    fsdp_spec,
    make_mesh,
    mesh_shape,
    mirrored_shardings,
    spec_for,
    tree_shardings,
)


def test_mesh_shape_fills_minus_one_with_the_rest():
    assert mesh_shape((("data", -1),), 8) == {"data": 8}
    assert mesh_shape((("data", -1), ("model", 2)), 8) == {"data": 4, "model": 2}
    assert mesh_shape((("model", 2), ("data", 4)), 8) == {"model": 2, "data": 4}


@pytest.mark.parametrize(
    "axes, devices, message",
    [
        ((("data", -1), ("model", 3)), 8, "does not fit 8 device"),
        ((("data", 2),), 8, "does not fit 8 device"),
        ((("model", -1),), 8, "include a 'data' axis"),
        ((("data", -1), ("data", 2)), 8, "name each axis once"),
        ((("data", -1), ("model", -1)), 8, "at most one -1"),
    ],
)
def test_bad_meshes_are_clear_errors(axes, devices, message):
    with pytest.raises(ShardingError, match=message):
        mesh_shape(axes, devices)


def test_mesh_has_auto_axes_over_the_given_devices():
    mesh = make_mesh((("data", -1),), jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1}
    assert str(mesh.axis_types[0]).endswith("Auto")


def test_fsdp_shards_the_largest_divisible_dimension_of_large_tensors():
    assert fsdp_spec((768, 3072), 8) == P(None, "data")
    assert fsdp_spec((3072, 768), 8) == P("data")
    assert fsdp_spec((1000, 768), 16) == P(None, "data")  # 1000 is not divisible by 16
    assert fsdp_spec((768,), 8) == P()  # small: replicated
    assert fsdp_spec((999, 777), 8) == P()  # nothing divisible
    assert fsdp_spec((768, 3072), 1) == P()


def test_rules_first_match_wins_and_explicit_specs_are_checked():
    mesh = make_mesh((("data", -1),), jax.devices()[:1])
    rules = [(r"head/kernel$", "replicate"), (r"kernel$", ("data", None)), (".*", "fsdp")]
    assert spec_for("head/kernel", (64, 10), rules, mesh) == P()
    assert spec_for("embedding/kernel", (64, 10), rules, mesh) == P("data", None)  # explicit specs are kept as given
    with pytest.raises(ShardingError, match=r"names mesh axes \['model'\]"):
        spec_for("x/kernel", (4, 4), [("kernel", ("model",))], mesh)
    with pytest.raises(ShardingError, match="is not one of"):
        spec_for("x", (4,), [(".*", "zero3")], mesh)


def test_optimizer_state_is_sharded_like_the_parameter_it_mirrors():
    mesh = make_mesh((("data", -1),), jax.devices()[:1])
    params = {"a": {"kernel": jax.ShapeDtypeStruct((128, 256), jnp.float32)}, "b": jax.ShapeDtypeStruct((3,), jnp.float32)}
    shardings = tree_shardings(params, [("kernel", ("data", None)), (".*", "replicate")], mesh)
    opt_state = {"mu": params, "count": jax.ShapeDtypeStruct((), jnp.int32)}
    mirrored = mirrored_shardings(opt_state, shardings, params, mesh)
    assert mirrored["mu"]["a"]["kernel"].spec == P("data", None)
    assert mirrored["mu"]["b"].spec == P() and mirrored["count"].spec == P()


def test_per_parameter_states_are_sharded_like_their_parameter():
    """Adafactor's state sits under each parameter (`<param>/v`, factored `v_row`/`v_col` of other shapes): the
    full-size second moment of a tensor it does not factor is sharded as that tensor, the factors replicated."""
    from vit_jax.config import base_config
    from vit_jax.optim import make_optimizer

    mesh = make_mesh((("data", -1),), jax.devices()[:1])
    params = {"a": {"kernel": jax.ShapeDtypeStruct((128, 256), jnp.float32)},
              "b": {"kernel": jax.ShapeDtypeStruct((8, 256), jnp.float32)}}  # 8 < 32: not factored
    shardings = tree_shardings(params, [("kernel", (None, "data"))], mesh)
    config = base_config().optimizer
    config.name = "adafactor"
    opt_state = jax.eval_shape(make_optimizer(config, 10).init, params)
    mirrored = mirrored_shardings(opt_state, shardings, params, mesh)
    specs = {path_string(path): sharding.spec for path, sharding in jax.tree_util.tree_leaves_with_path(mirrored)}
    unfactored = [spec for path, spec in specs.items() if "b/kernel/" in path and path.endswith("/v")]
    assert unfactored == [P(None, "data")]
    assert all(spec == P() for path, spec in specs.items() if path.endswith(("v_row", "v_col")))
    assert [spec for path, spec in specs.items() if path.endswith("ema/b/kernel")] == [P(None, "data")]  # momentum


def abstract_mesh(data, model):
    from jax.sharding import AbstractMesh

    return AbstractMesh((data, model), ("data", "model"))


def test_tensor_parallel_splits_heads_and_hidden_units_megatron_style():
    mesh = abstract_mesh(4, 2)
    block = "Transformer/encoderblock_3/"
    shapes = {
        "MultiHeadDotProductAttention_0/query/kernel": ((768, 12, 64), P(None, "model")),
        "MultiHeadDotProductAttention_0/value/bias": ((12, 64), P("model")),
        "MultiHeadDotProductAttention_0/out/kernel": ((12, 64, 768), P("model")),
        "MultiHeadDotProductAttention_0/out/bias": ((768,), P()),
        "MlpBlock_0/Dense_0/kernel": ((768, 3072), P(None, "model")),
        "MlpBlock_0/Dense_0/bias": ((3072,), P("model")),
        "MlpBlock_0/Dense_1/kernel": ((3072, 768), P("model")),
        "MlpBlock_0/Dense_1/bias": ((768,), P()),
        "LayerNorm_0/scale": ((768,), P()),
    }
    for name, (shape, expected) in shapes.items():
        assert spec_for(block + name, shape, [(".*", "tp")], mesh) == expected, name
    # with fsdp over data on a remaining dimension
    assert spec_for(block + "MlpBlock_0/Dense_0/kernel", (768, 3072), [(".*", "tp_fsdp")], mesh) == P("data", "model")
    assert spec_for(block + "MultiHeadDotProductAttention_0/out/kernel", (12, 64, 768), [(".*", "tp_fsdp")],
                    mesh) == P("model", None, "data")
    assert spec_for("head/kernel", (768, 1000), [(".*", "tp_fsdp")], mesh) == P(None, "data")  # not TP: fsdp only


def test_scanned_parameters_keep_their_depth_axis_whole():
    mesh = abstract_mesh(4, 2)
    stacked = "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
    assert spec_for(stacked, (12, 768, 3072), [(".*", "tp")], mesh) == P(None, None, "model")
    assert spec_for(stacked, (16, 768, 3072), [(".*", "tp_fsdp")], mesh) == P(None, "data", "model")
    assert spec_for("Transformer/encoderblock/LayerNorm_0/scale", (16, 16384), [(".*", "fsdp")], mesh) == P(None, "data")


def test_tensor_parallel_errors_name_the_parameter():
    with pytest.raises(ShardingError, match=r"query/kernel: dimension 1 of shape \(192, 3, 64\) .* not divisible by "
                                            r"the 'model' axis size 2"):
        spec_for("MultiHeadDotProductAttention_0/query/kernel", (192, 3, 64), [(".*", "tp")], abstract_mesh(4, 2))
    from jax.sharding import AbstractMesh

    with pytest.raises(ShardingError, match="needs a 'model' mesh axis"):
        spec_for("MlpBlock_0/Dense_0/kernel", (8, 8), [(".*", "tp")], AbstractMesh((8,), ("data",)))
