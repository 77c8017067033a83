"""The plan's cost lines (bench/cost/): FLOPs per step from bench.speed.flops times the batch, hours from the
cluster's peak and stated utilisation, the paper's A100-hours beside the paper's tokenizers, totals that are the sum
of their lines; and the paper's cost file agrees with the paper table the report reads."""

import csv
import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import models
from bench import cost as C
from bench.plan import describe, make_plan
from bench.speed import flops as FL
from bench.speed.training import paper_recipe
from bench.sweep import SWEEPS

REPO = Path(__file__).resolve().parents[2]
A100 = 312e12 * 0.4  # sweeps/cluster/example.yaml: the A100's bf16 dense peak and the stated utilisation
GPUS = 8


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    """grid=latent_vs_size preset=paper data=imagenet cluster=example, on a small ImageNet-layout tree (the plan
    checks the root) with a stand-in reference batch file (the plan checks that it exists)."""
    from tests.infra.rehearsal import write_imagenet_tree

    root = tmp_path_factory.mktemp("paper_plan")
    write_imagenet_tree(root / "imagenet")
    (root / "ref.npz").write_bytes(b"stand-in")
    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose(
            "sweep",
            overrides=[
                "grid=latent_vs_size",
                "preset=paper",
                "cluster=example",
                "data=imagenet",
                f"data.root={root / 'imagenet'}",
                "data.num_classes=4",
                f"preset.eval.reference_batch={root / 'ref.npz'}",
                f"outputs={root / 'outputs'}",
            ],
        )
    plan = make_plan(cfg)
    return plan, describe(plan, cost=True)


def _line(text: str, cell: str, stage: str) -> list[str]:
    block = text.split(f"\n  {cell}\n", 1)[1].split("\n  TiTok-", 1)[0]
    return next(line for line in block.splitlines() if line.split()[:1] == [stage]).split()


def test_the_paper_plan_prints_the_l32_tokenizer_cost(paper_plan):
    plan, text = paper_plan
    assert "device A100-80GB: peak 312 TFLOP/s (cluster config), utilisation 40% assumed" in text
    # the cell's tokenizer as the stage builds it: the paper preset's codebook 1024 x 16, the teacher's VQGAN
    c = models.variants.with_overrides(
        models.resolve("TiTok-L-32").config,
        dict(
            patch_size=16,
            decoder_patch_size=16,
            codebook_size=1024,
            token_size=16,
            encoder_size="L",
            decoder_size="L",
            pixel_decoder=False,
            vqgan=models.resolve("MaskGIT-VQGAN").config,
            image_size=256,
        ),
    )
    per_step = FL.train_stage1(c) * 256
    (stage1,) = [s for s in C.plan_costs(plan)["TiTok-L-32"] if s.stage == "stage1"]
    assert (stage1.flops_per_step, stage1.steps) == (per_step, 500_000)
    gpu_h = per_step * 500_000 / (A100 * GPUS) / 3600 * GPUS
    assert stage1.hours(C.device_from_cluster(plan.config["cluster"])) == pytest.approx((gpu_h, gpu_h / GPUS))
    printed = _line(text, "TiTok-L-32", "stage1")
    assert float(printed[1]) == pytest.approx(per_step, rel=1e-3) and printed[2] == "500,000"
    assert printed[4] == f"{gpu_h:,.0f}" and float(printed[5]) == pytest.approx(gpu_h / GPUS, rel=1e-2)
    # the paper's hours beside the cell, said to cover another recipe (stage 1 for 1M steps + stage 2, codebook 4096)
    total = _line(text, "TiTok-L-32", "cell")
    assert " ".join(total[-5:]) == "4,736 (another recipe: see below)"


def test_the_paper_recipe_line_compares_with_the_papers_4736_a100_hours(paper_plan):
    _, text = paper_plan
    c, s2 = models.resolve("TiTok-L-32").config, paper_recipe("stage2")
    flops = (
        FL.train_stage1(dataclasses.replace(c, pixel_decoder=False)) * 256 * 1_000_000
        + FL.train_stage2(c, s2.perceptual, s2.gan) * 256 * 500_000
    )
    gpu_h = flops / A100 / 3600
    (line,) = [x for x in text.splitlines() if x.startswith("  paper recipe TiTok-L-32 ")]
    assert f": {gpu_h:,.0f} GPU-h," in line and "the paper: 4,736 A100-h (64 A100-40G x 74 h)" in line
    assert line.endswith(f"paper / estimate = {4736 / gpu_h:.2f}")
    assert "stage1 1,000,000 steps x batch 256" in line and "stage2 500,000 steps x batch 256" in line


def test_totals_are_the_sums_of_their_lines(paper_plan):
    plan, text = paper_plan
    device = C.device_from_cluster(plan.config["cluster"])
    costs = C.plan_costs(plan)
    for cell in ("TiTok-S-16", "TiTok-L-32"):
        printed = [float(_line(text, cell, s.stage)[4].replace(",", "")) for s in costs[cell]]
        cell_total = float(_line(text, cell, "cell")[3].replace(",", ""))
        assert cell_total == pytest.approx(sum(printed), rel=1e-2, abs=0.05)
    exact = sum(s.hours(device)[0] for lines in costs.values() for s in lines)
    (total,) = [x.split() for x in text.splitlines() if x.startswith("  total ")]
    assert total[2] == f"{exact:,.0f}"
    assert sum(e["cost_est_gpu_hours"] for e in C.cell_estimates(plan, device).values()) == pytest.approx(
        sum(
            s.hours(device)[0]
            for cell, lines in costs.items()
            if cell != "_shared"
            for s in lines
            if s.stage in ("stage1", "stage2", "generator", "pretokenize", "teacher")
            and any(
                t.stage == s.stage and t.resources == "train" for c in plan.cells if c.name == cell for t in c.tasks
            )
        )
    )


def test_the_tiny_plan_shows_no_paper_hours_beside_toy_models(tmp_path):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose("sweep", overrides=[f"outputs={tmp_path}", "cluster.device.peak_tflops=0.1"])
    text = describe(make_plan(cfg), cost=True)
    assert "peak 0.1 TFLOP/s (cluster config), utilisation 30% assumed" in text and "core-h" in text
    assert "4,736" not in text and "paper recipe" not in text  # the tiny TiTok-L-32 is not the paper's


def test_a_cluster_without_a_usable_device_says_what_to_set():
    with pytest.raises(C.CostError, match="cluster.device.utilization"):
        C.device_from_cluster({"gpus_per_node": 8, "device": {"peak_tflops": 312}})
    with pytest.raises(C.CostError, match="peak_tflops is not set"):
        C.device_from_cluster({"gpus_per_node": 8, "device": {"utilization": 0.4}})
    cpu = C.device_from_cluster(
        {"gpus_per_node": 0, "cpus_per_task": 4, "device": {"peak_tflops": 0.2, "utilization": 0.5}}
    )
    assert (cpu.cpu, cpu.devices, cpu.cores, cpu.job_flops) == (True, 1, 4, 0.1e12)


def test_the_paper_cost_file_agrees_with_the_paper_table():
    costs = C.paper_costs()
    with open(REPO / "reports" / "paper_numbers.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    table = {
        (r["model"] if r["resolution"] == "256" else f"{r['model']}@{r['resolution']}"): int(
            r["tokenizer_train_a100_hours"]
        )
        for r in rows
        if r["tokenizer_train_a100_hours"]
    }
    assert table == {m: r["a100_hours"] for m, r in costs.items()}
    for model, r in costs.items():
        assert r["gpus"] * r["hours"] == r["a100_hours"], model
        models.resolve(model)  # a registry name
    assert re.search(r"L-32 64 GPUs x 74 h", (REPO / "reports" / "paper_numbers.csv").read_text())
