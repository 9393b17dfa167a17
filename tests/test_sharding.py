import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

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
    assert fsdp_spec((3072, 768), 8) == P("data", None)
    assert fsdp_spec((1000, 768), 16) == P(None, "data")  # 1000 is not divisible by 16
    assert fsdp_spec((768,), 8) == P()  # small: replicated
    assert fsdp_spec((999, 777), 8) == P()  # nothing divisible
    assert fsdp_spec((768, 3072), 1) == P()


def test_rules_first_match_wins_and_explicit_specs_are_checked():
    mesh = make_mesh((("data", -1),), jax.devices()[:1])
    rules = [(r"head/kernel$", "replicate"), (r"kernel$", ("data", None)), (".*", "fsdp")]
    assert spec_for("head/kernel", (64, 10), rules, mesh) == P()
    assert spec_for("embedding/kernel", (64, 10), rules, mesh) == P("data", None)
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
