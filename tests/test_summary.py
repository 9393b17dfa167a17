import re
import subprocess
import sys

import pytest

from vit_jax.models import create_model
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


def test_flops_of_scanned_models_count_every_layer():
    model = create_model("S/8x16", num_classes=10, classifier="gap")
    layered = summarize(model, (64, 96, 3))
    scanned = summarize(model.clone(scan=True, remat=True), (64, 96, 3))
    assert scanned.flops_per_image == pytest.approx(layered.flops_per_image, rel=1e-6)
    assert scanned.total_params == layered.total_params
    assert (layered.grid, layered.tokens_per_image) == ((8, 6), 48)


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["B/16", "--image-size", "225"], "image size 225x225 (height x width) is not a multiple of the patch size 16x16"),
        (["Q/16"], "unknown model size 'Q'"),
        (["B/16", "--set", "heads=3"], "unknown model option(s) ['heads']"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_readme_main_command_runs():
    result = subprocess.run([sys.executable, "-m", "vit_jax.summary", "B/16"], capture_output=True, text=True,
                            timeout=300, check=True)
    assert re.search(r"^total\s+86,567,656$", result.stdout, re.M)
