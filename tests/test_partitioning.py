import jax
import numpy as np

from tests.conftest import MINI, live_params
from vit_jax.models import create_model
from vit_jax.models.partitioning import ActivationSharding
from vit_jax.sharding import make_mesh


def test_a_model_with_activation_constraints_computes_the_same_logits(rng):
    # Wiring only: on one device the constraints are no-ops; tests/test_scale_out.py runs them on 8 devices.
    model = create_model("Ti/4", num_classes=5, **{**MINI, "num_layers": 2})
    images = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    params = live_params(model, images)
    mesh = make_mesh((("data", -1), ("model", 1)), jax.devices()[:1])
    constrained = model.clone(activation_sharding=ActivationSharding(mesh, "data", "model"))
    for scan in (False, True):
        from vit_jax.models import stack_encoder_blocks

        p = stack_encoder_blocks(params) if scan else params
        np.testing.assert_allclose(
            jax.jit(lambda p, x, scan=scan: constrained.clone(scan=scan).apply({"params": p}, x, train=False))(
                p, images),
            model.clone(scan=scan).apply({"params": p}, images, train=False), atol=1e-5)
