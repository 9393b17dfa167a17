import csv

import numpy as np
from PIL import Image

from vit_jax.sweep_report import (
    COLUMNS,
    PointResult,
    plot_accuracy_vs_gflops,
    plot_accuracy_vs_patch_size,
    plot_curves,
    plot_throughput,
    write_csv,
    write_markdown,
)


def row(point, kind, patch, seed, val, test, gflops, ips):
    return {"point": point, "kind": kind, "seed": seed, "patch_size": patch, "status": "done",
            "final_eval_accuracy": val, "best_eval_accuracy": val + 0.01, "test_accuracy": test, "params": 1000,
            "tokens_per_image": 64 // int(patch) ** 2 or 1, "gflops_per_image": gflops, "images_per_second": ips,
            "wall_seconds": 10.0, "error": ""}


ROWS = [
    row("p2_s0", "dedicated", "2", 0, 0.90, 0.88, 0.006, 3000.0),
    row("p2_s1", "dedicated", "2", 1, 0.94, 0.92, 0.006, 3100.0),
    row("p4_s0", "dedicated", "4", 0, 0.96, 0.95, 0.002, 9000.0),
    row("flexi_s0", "FlexiViT", "2", 0, 0.91, 0.90, 0.006, 5000.0),
    row("flexi_s0", "FlexiViT", "4", 0, 0.97, 0.96, 0.002, 5000.0),
    {"point": "p8_s0", "kind": "", "patch_size": "", "status": "failed", "error": "ConfigError: bad", "seed": 0,
     "wall_seconds": 1.0},
]


def test_csv_has_every_row_and_column(tmp_path):
    write_csv(ROWS, tmp_path / "results.csv")
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["point"], r["patch_size"], r["status"]) for r in rows] == [
        ("p2_s0", "2", "done"), ("p2_s1", "2", "done"), ("p4_s0", "4", "done"), ("flexi_s0", "2", "done"),
        ("flexi_s0", "4", "done"), ("p8_s0", "", "failed")]
    assert rows[-1]["error"] == "ConfigError: bad" and float(rows[1]["final_eval_accuracy"]) == 0.94


def test_markdown_puts_flexivit_beside_the_dedicated_models_with_mean_and_std(tmp_path):
    text = write_markdown(ROWS, tmp_path / "results.md").read_text()
    assert "| patch size | tokens / image | GFLOPs / image | dedicated val | dedicated test | FlexiViT val | FlexiViT test |" in text
    # patch 2: dedicated seeds 90 and 94 -> mean 92.00, sample std 2.83; FlexiViT one seed, 91.00
    assert "| 2 | 16 | 0.0060 | 92.00 ± 2.83 | 90.00 ± 2.83 | 91.00 | 90.00 |" in text
    assert "| 4 | 4 | 0.0020 | 96.00 | 95.00 | 97.00 | 96.00 |" in text
    assert "| p8_s0 |  |  | failed (ConfigError: bad) |" in text


def assert_is_a_drawn_plot(path):
    image = np.asarray(Image.open(path).convert("L"), np.float32)
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert image.std() > 10  # not blank: axes, text and lines


def test_plots_are_written(tmp_path):
    done = [r for r in ROWS if r["status"] == "done"]
    for plot, name in [(plot_accuracy_vs_patch_size, "a.png"), (plot_accuracy_vs_gflops, "b.png"),
                       (plot_throughput, "c.png")]:
        [path] = plot(done, tmp_path / name)
        assert_is_a_drawn_plot(path)
    curves = {"p2_s0": PointResult([], {"train/loss": [(1, 2.3), (2, 1.0)], "eval/accuracy": [(2, 0.5)]})}
    [path] = plot_curves(curves, tmp_path / "curves.png")
    assert_is_a_drawn_plot(path)
