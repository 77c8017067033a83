"""Stage `probe`: linear probing of a tokenizer's frozen encoder features (bench.eval.probe): probe_top1, a
standardised logistic regression fitted with L-BFGS on `num_train` images of the train split, scored on `num_val`
images of `split`, on the encoder features `features` names (bench.eval.probe.FEATURES; recorded as the tag
titok.probe_features), with probe_top1_lo / _hi, its 95% Wilson interval over the validation images (the tag
titok.probe_interval says so).

Identity: the images (dataset name, image size, classes, seed, split, num_train, num_val), the features, the fit's
iterations (epochs), the stand-in permission and the tokenizer (its stage's identity or the released name / file
hash); not the batch size, device, data root and workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.stages import base
from bench.stages.planning import PlanContext, eval_keywords
from bench.train.recipes import DataConfig

NAME = "probe"
RESOURCES = "eval"
PRODUCT = None
RULE = base.IdentityRule(NAME, base.EVAL_IGNORED, {"tokenizer": "tokenizer"})


@dataclass(frozen=True)
class ProbeSpec:
    tokenizer: str
    data: DataConfig
    num_train: int
    num_val: int
    split: str = "val"  # of the validation images (the classifier trains on the train split)
    epochs: int = 100
    features: str = "latent_mean"  # where the pooled features are read (bench.eval.probe.FEATURES)
    allow_random_weights: bool = False
    batch_size: int = 64
    device: str = "auto"


def plan(c: PlanContext):
    if "probe" not in c.stages:
        return None
    ev = c.p.eval
    return ProbeSpec(
        tokenizer=c.tokenizer,
        data=c.val_data,
        num_train=ev.probe_train_images,
        num_val=ev.probe_val_images,
        epochs=ev.probe_epochs,
        features=ev.probe_features,
        **eval_keywords(c),
    ), {"tokenizer": c.tokenizer_task}


def run(spec: ProbeSpec, ctx: base.Context) -> dict:
    from bench.core.loading import SetupError, load_model
    from bench.eval.probe import PROBE_INTERVAL, check_features, linear_probe
    from bench.tracking import eval_tag

    try:
        check_features(spec.features)
    except ValueError as err:
        raise SetupError(str(err)) from None
    tok = load_model(spec.tokenizer, "tokenizer", spec.allow_random_weights)
    val = base.eval_dataset(spec.data, spec.split, spec.num_val)
    metrics = linear_probe(
        tok.model,
        base.eval_dataset(spec.data, "train", spec.num_train),
        val,
        num_train=spec.num_train,
        num_val=spec.num_val,
        info=ctx.info,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        num_workers=spec.data.num_workers,
        features=spec.features,
    )
    return {
        "metrics": metrics,
        "random_weights": {"tokenizer": tok.random},
        "tokenizer": tok.label,
        "data": val.describe(),
        "tags": {
            eval_tag("probe", "features"): spec.features,
            eval_tag("probe", "interval"): PROBE_INTERVAL.format(n=spec.num_val),
        },
    }
