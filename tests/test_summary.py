import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import create_model
from vit_jax.native import onednn
from vit_jax.summary import main, summarize


def matmul_flops(d, depth, mlp, patch, classes, patches, prefix, channels=3):
    """2 x multiply-adds of the patch embedding, the blocks (projections, MLP, QK^T and AV) and the head."""
    tokens = patches + prefix
    macs = patches * patch[0] * patch[1] * channels * d
    macs += depth * (tokens * (4 * d * d + 2 * d * mlp) + 2 * tokens * tokens * d)
    macs += d * classes
    return 2 * macs


def test_b16_summary_counts_parameters_tokens_and_flops():
    summary = summarize(create_model("B/16", num_classes=1000), (224, 224, 3))
    assert summary.total_params == 86_567_656
    modules = summary.params_per_module
    assert list(modules)[:4] == ["embedding", "cls", "Transformer", "Transformer/posembed_input"]
    assert modules["embedding"] == 16 * 16 * 3 * 768 + 768
    assert modules["Transformer/posembed_input"] == 197 * 768
    assert modules["head"] == 768 * 1000 + 1000
    assert sum(v for k, v in modules.items() if k.startswith("Transformer/")) == modules["Transformer"]
    assert (summary.grid, summary.num_patches, summary.tokens_per_image) == ((14, 14), 196, 197)
    # Matmuls are all but ~0.4% of the work; XLA also counts softmax, LayerNorm and GELU.
    expected = matmul_flops(768, 12, 3072, (16, 16), 1000, 196, 1)
    assert expected < summary.flops_per_image < 1.01 * expected


def whole_model_flops(model, image_shape):
    """XLA's count for the whole unscanned forward pass, every block lowered."""
    model = model.clone(scan=False, remat=False)
    images = jnp.zeros((1, *image_shape))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))["params"]
    with onednn.xla_products():
        lowered = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(params, images)
    return lowered.cost_analysis()["flops"]


@pytest.mark.parametrize("options", [dict(classifier="gap", scan=True, remat=True),
                                     dict(classifier="map", num_registers=2, posemb="rope_mixed", qk_norm=True,
                                          layer_scale=0.1),
                                     dict(num_kv_heads=(1, 2, 1, 2))])  # blocks that differ: lowered whole
def test_flops_count_every_block_as_the_whole_models_lowering(options):
    """Deep models are counted from their 1- and 2-block versions; a scanned one as if unscanned (XLA counts a
    loop's body once)."""
    model = create_model("S/8x16", num_classes=10, num_layers=4, hidden_size=64, num_heads=2, mlp_dim=128, **options)
    summary = summarize(model, (64, 96, 3))
    assert summary.flops_per_image == pytest.approx(whole_model_flops(model, (64, 96, 3)), rel=1e-6)
    assert summary.total_params == summarize(model.clone(scan=False, remat=False), (64, 96, 3)).total_params
    assert (summary.grid, summary.num_patches) == ((8, 6), 48)


def test_cli_prints_the_summary(capsys):
    assert main(["Ti/16", "--num-classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^total\s+5,717,416$", out, re.M)
    assert re.search(r"^embedding\s+147,648$", out, re.M)
    assert "tokens per image: 197 (14x14 patch grid = 196 patches + 1 class token)" in out
    gflops = float(re.search(r"GFLOPs per image: ([\d.]+)", out).group(1))
    assert gflops == pytest.approx(matmul_flops(192, 12, 768, (16, 16), 1000, 196, 1) / 1e9, rel=0.02)


def test_cli_options_and_overrides(capsys):
    assert main(["S/8x16", "--image-size", "32x64", "--channels", "1", "--num-classes", "10",
                 "--set", "classifier=gap", "--set", "representation_size=None"]) == 0
    out = capsys.readouterr().out
    assert "on 32x64x1 images" in out and "tokens per image: 16 (4x4 patch grid = 16 patches)" in out
    assert "cls" not in out.split()
    # the size as two values, before the variant it used to swallow
    assert main(["--image-size", "32", "64", "S/8x16", "--channels", "1", "--num-classes", "10",
                 "--set", "classifier=gap", "--set", "representation_size=None"]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["B/16", "--image-size", "225"], "image size 225x225 (height x width) is not a multiple of the patch size 16x16"),
        (["B/16", "--image-size", "224x"], "--image-size 224x: expected N, HxW or H W (positive integers)"),
        (["Q/16"], "unknown model size 'Q'"),
        (["B/16", "--set", "heads=3"], "unknown model option(s) ['heads']"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_checkpoints_model_is_summarised_at_its_own_size_or_another(tmp_path, capsys):
    """An .npz file: the parameters are the file's (counted here from its arrays), the size its table's grid."""
    from vit_jax.checkpoint.npz import save_npz

    model = create_model("Ti/4", num_classes=7, hidden_size=32, num_layers=3, mlp_dim=64, num_heads=4)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))["params"]
    save_npz(jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes), tmp_path / "tiny.npz")
    with np.load(tmp_path / "tiny.npz", allow_pickle=False) as stored:
        total = sum(stored[name].size for name in stored.files)
    for extra, size, tokens in (([], (16, 16), "17 (4x4 patch grid"), (["--image-size", "32x24"], (32, 24), "49 (8x6")):
        assert main(["--checkpoint", str(tmp_path / "tiny.npz"), *extra]) == 0
        out = capsys.readouterr().out
        assert f"on {size[0]}x{size[1]}x3 images" in out and f"tokens per image: {tokens}" in out
        assert int(re.search(r"^total\s+([\d,]+)$", out, re.M)[1].replace(",", "")) == total
        gflops = float(re.search(r"GFLOPs per image: ([\d.]+)", out)[1])
        assert gflops == pytest.approx(whole_model_flops(model, (*size, 3)) / 1e9, abs=5e-4)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "tiny.npz"), "Ti/16", "--set", "posemb=sincos2d"])
    assert exit_info.value.code == 2
    assert "VARIANT, --set: not used with --checkpoint" in capsys.readouterr().err


@pytest.mark.xdist_group("readme_run")
def test_the_readme_runs_workdir_is_summarised_at_its_grayscale_16x16_images(readme_run, capsys):
    from vit_jax.checkpoint.pretrained import load_pretrained

    workdir, _ = readme_run
    assert main(["--checkpoint", str(workdir)]) == 0
    out = capsys.readouterr().out
    total = sum(np.size(leaf) for leaf in jax.tree.leaves(load_pretrained(workdir).params))
    assert "on 16x16x1 images" in out and "tokens per image: 16 (4x4 patch grid = 16 patches)\n" in out
    assert int(re.search(r"^total\s+([\d,]+)$", out, re.M)[1].replace(",", "")) == total


@pytest.mark.slow
def test_readme_main_command_runs():
    result = subprocess.run([sys.executable, "-m", "vit_jax.summary", "B/16"], capture_output=True, text=True,
                            timeout=300, check=True)
    assert re.search(r"^total\s+86,567,656$", result.stdout, re.M)
