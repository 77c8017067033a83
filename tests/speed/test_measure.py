"""bench.speed.measure and bench.speed.scaling on toy sizes: the generation and tokenizer throughput rows and the
cost against K. Correctness only: no timing assertions."""

from bench.speed import flops as FL
from bench.speed import measure
from bench.speed.scaling import scaling
from tests.speed.toys import toy_pair


def test_measure_generation_api():
    tok, gen = toy_pair()
    row = measure.measure_generation(
        tok,
        gen,
        batch_size=2,
        sampler_settings={"num_steps": 2},
        mode="parity",
        warmup=0,
        repeats=2,
        device="cpu",
        keep_outputs=True,
    )
    assert row["samples_per_s"] > 0 and row["runs"] == 2 and row["steps"] == 2
    assert row["gflop_per_item"] * 1e9 == FL.generation(gen.config, gen.config.sampler.updated(num_steps=2)) + (
        FL.titok_decode(tok.config)
    )
    assert row["ids"].shape == (2, 32) and row["images"].shape == (2, 3, 64, 64)
    rows = measure.measure_tokenizer(tok, batch_size=2, mode="fast", warmup=0, repeats=1)
    assert [r["task"] for r in rows] == ["encode", "decode"] and all(r["throughput"] > 0 for r in rows)


def test_measure_generation_keeps_its_package_path():
    from bench.speed import measure_generation

    assert measure_generation is measure.measure_generation


def test_scaling_toy():
    rows = scaling(sizes=["S"], ks=[16, 64], toy=True, batch_size=1, warmup=0, repeats=1, generation=True)
    assert [(r["tokens"], r["task"]) for r in rows] == [
        (16, "encode+decode"),
        (16, "generate"),
        (64, "encode+decode"),
        (64, "generate"),
    ]
    assert rows[2]["gflop_per_item"] > rows[0]["gflop_per_item"]
