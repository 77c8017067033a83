"""The sampler at full size: each released generator, built at its released size with seeded random weights in
float64, samples at its released settings (temperature 0) exactly the token ids of an independent, step-by-step
statement of the reference sampler (ImageBert.generate in the official repository's modeling/maskgit.py), through
both of `generate`'s guidance paths (separate passes, and the batched pass of evaluation and the speed parity path).

Full size matters: with float64 weights, chosen logits that tie at float32 resolution are common there, and the
reference ranks confidences in float32; the small parity cases are too small to tie. The statement itself is checked
first against the reference implementation's own sampled ids (tests/data/reference/parity, toy sizes).

A float64 forward pass costs seconds at full size, so each input row's logits are computed once (`RowLogits`) and
every sampler reads them; the U-ViT runs STEPS steps instead of its released 64 (the same schedule otherwise).
"""

import math
import time

import pytest
import torch

import models
from tests.reference import parity_folder, parity_io

LABELS = (207, 980)  # a batch of 2 class labels
# sampling steps of each test: the released 8 for the ViT generators, 4 instead of 64 for the U-ViT (module doc)
STEPS = {"MaskGIT-ViT:TiTok-L-32": 8, "MaskGIT-ViT:TiTok-B-64": 8, "MaskGIT-UViT:TiTok-S-128": 4}

# the official repository's configs/infer: steps, guidance scale, guidance decay, randomize_temperature; softmax-
# temperature annealing is on in its ImageNet sampling script; power-cosine's exponent is 3.0.
RELEASED = {
    "MaskGIT-ViT:TiTok-L-32": dict(num_steps=8, guidance_scale=4.5, guidance_decay="linear", randomize_temperature=9.5),
    "MaskGIT-ViT:TiTok-B-64": dict(
        num_steps=8, guidance_scale=3.0, guidance_decay="linear", randomize_temperature=11.0
    ),
    "MaskGIT-UViT:TiTok-S-128": dict(
        num_steps=64, guidance_scale=6.9, guidance_decay="power-cosine", randomize_temperature=2.8
    ),
}
SIZES = {
    "MaskGIT-ViT:TiTok-L-32": (32, 177.2),
    "MaskGIT-ViT:TiTok-B-64": (64, 177.2),
    "MaskGIT-UViT:TiTok-S-128": (128, 295.0),
}  # K, millions of parameters (counted from the released layouts)


# ---- the reference sampler, restated ----------------------------------------------------------------------------
def reference_tokens(
    logits,
    labels: torch.Tensor,
    num_tokens: int,
    mask_id: int,
    *,
    num_steps: int,
    guidance_scale: float,
    guidance_decay: str,
    guidance_scale_pow: float = 3.0,
    softmax_temperature_annealing: bool = True,
    rank_dtype=torch.float32,
) -> torch.Tensor:
    """ImageBert.generate at randomize_temperature 0 (no Gumbel noise), one step at a time: guidance, annealing and
    the argmax in the logits' dtype; the chosen logits cast to float32 (`.float()`) before they are ranked
    (`rank_dtype`: another dtype only to show that a case has float32 ties).
    `logits(ids, labels, drop)` -> [B, K, codebook]: the conditional logits, or the null class's where drop."""
    batch = len(labels)
    ids = torch.full((batch, num_tokens), mask_id, dtype=torch.long)
    for step in range(num_steps):
        ratio = (step + 1) / num_steps
        masked = ids == mask_id
        # classifier-free guidance: the scale of this step and how it mixes the two passes
        if guidance_decay == "linear":  # (s/T) g: no guidance at step 0
            scale = (step / num_steps) * guidance_scale
        elif guidance_decay == "power-cosine":  # MDT's schedule, around the unconditional logits
            scale = (guidance_scale - 1) * (1 - math.cos(math.pi * (step / num_steps) ** guidance_scale_pow)) / 2 + 1
        else:
            scale = guidance_scale
        if scale != 0:  # one pass over [ids; ids] with [class; null], as the reference
            both = logits(torch.cat([ids, ids]), torch.cat([labels, labels]), torch.arange(2 * batch) >= batch)
            cond, uncond = both[:batch], both[batch:]
            anchor = uncond if guidance_decay == "power-cosine" else cond
            z = anchor + (cond - uncond) * scale
        else:
            z = logits(ids, labels, torch.zeros(batch, dtype=torch.bool))
        if softmax_temperature_annealing:
            z = z / (0.5 + 0.8 * (1 - ratio))
        # temperature 0: each position's choice is its argmax, the choice's confidence its logit; fixed tokens stay
        best = z.max(dim=-1)
        chosen = torch.where(masked, best.indices, ids)
        if step == num_steps - 1:  # the last step keeps every token
            return chosen
        # re-mask floor(K arccos(r) / (pi/2)) tokens, at least 1 and at most the first row's masked count - 1, the
        # first row's count for every row; fixed tokens have confidence +inf; confidences are float32; a row masks
        # every token whose confidence is at most its count-th smallest (all of a float32 tie)
        count = math.floor(num_tokens * math.acos(ratio) / (math.pi / 2))
        count = max(1, min(int(masked[0].sum()) - 1, count))
        ids = chosen.clone()
        chosen_logit = best.values.to(rank_dtype)
        for b in range(batch):
            confidence = [chosen_logit[b, j].item() if masked[b, j] else math.inf for j in range(num_tokens)]
            cut = sorted(confidence)[count - 1]
            for j in range(num_tokens):
                if confidence[j] <= cut:
                    ids[b, j] = mask_id
    return ids


class RowLogits:
    """A generator's logits, each (ids row, label, null or not) computed once: every sampler sees the same numbers
    for the same input, and one that follows an earlier one's inputs costs no forward pass."""

    def __init__(self, model: models.MaskGITGenerator):
        self.model, self.cache, self.rows_computed, self.passes = model, {}, 0, 0

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, drop=False) -> torch.Tensor:
        drop = torch.as_tensor(drop, dtype=torch.bool).expand(len(labels))
        keys = [(ids[i].numpy().tobytes(), int(labels[i]), bool(drop[i])) for i in range(len(ids))]
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in self.cache and key not in seen:
                seen.add(key)
                todo.append(i)
        if todo:
            with torch.no_grad():
                out = self.model(ids[todo], labels[todo], drop[todo])
            self.passes += 1
            self.rows_computed += len(todo)
            for n, i in enumerate(todo):
                self.cache[keys[i]] = out[n]
        return torch.stack([self.cache[key] for key in keys])


# ---- the statement against the reference's own samples ------------------------------------------------------------
@pytest.mark.parametrize(
    "name,guidance",
    [
        ("generator_vit", dict(guidance_scale=4.5, guidance_decay="linear", num_steps=8)),
        ("generator_uvit", dict(guidance_scale=6.9, guidance_decay="power-cosine", num_steps=12)),
    ],
)
def test_the_restated_sampler_reproduces_the_reference_samples(name, guidance):
    model, io = models.from_pretrained(parity_folder(name)).eval(), parity_io(name)
    labels, c = io["condition"], model.config
    for key, settings in [
        ("sampled_sta0", dict(guidance, softmax_temperature_annealing=False)),
        ("sampled_sta1", dict(guidance, softmax_temperature_annealing=True)),
        (
            "sampled_constant",
            dict(guidance_scale=2.0, guidance_decay="constant", num_steps=6, softmax_temperature_annealing=False),
        ),
    ]:
        got = reference_tokens(RowLogits(model), labels, c.num_tokens, model.mask_token_id, **settings)
        assert torch.equal(got, io[key]), key


# ---- the released generators at full size, float64 ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RELEASED))
def test_released_generator_samples_the_reference_tokens_in_float64(name):
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = models.build(name).double().eval()
    c = model.config
    released = c.sampler
    assert {k: getattr(released, k) for k in RELEASED[name]} == RELEASED[name]
    assert released.softmax_temperature_annealing and released.guidance_scale_pow == 3.0
    num_tokens, millions = SIZES[name]
    assert (c.num_tokens, c.codebook_size, c.num_classes) == (num_tokens, 4096, 1000)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    steps = STEPS[name]
    labels = torch.tensor(LABELS)
    logits = RowLogits(model)
    built = time.perf_counter()

    # the batched-guidance path first (one pass per step over both halves): it pays the forwards
    batched = model.generate(labels, batch_guidance=True, forward=logits, randomize_temperature=0.0, num_steps=steps)
    assert logits.cache and all(v.dtype == torch.float64 for v in logits.cache.values())
    passes = logits.passes
    separate = model.generate(labels, forward=logits, randomize_temperature=0.0, num_steps=steps)
    expected = reference_tokens(
        logits,
        labels,
        c.num_tokens,
        model.mask_token_id,
        num_steps=steps,
        guidance_scale=released.guidance_scale,
        guidance_decay=released.guidance_decay,
        guidance_scale_pow=released.guidance_scale_pow,
        softmax_temperature_annealing=released.softmax_temperature_annealing,
    )
    assert expected.shape == (2, c.num_tokens) and not (expected == model.mask_token_id).any()
    assert torch.equal(batched, expected)
    assert torch.equal(separate, expected)
    assert logits.passes == passes  # the same inputs at every step: no sampler needed a logit the first did not
    # not a constant answer (seen: the ViT generators give each label its own tokens; the random-init U-ViT barely
    # hears the class token and picks from two codes, with distinct float64 confidences)
    assert expected.unique().numel() > 1
    print(
        f"{name}: {steps} steps, {passes} float64 forward passes; build {built - t0:.1f} s, "
        f"sampling {time.perf_counter() - built:.1f} s"
    )


@pytest.mark.slow
def test_float32_ties_at_full_size_are_ranked_as_the_reference():
    """TiTok-L-32's generator at full size in float64, its position embeddings scaled by 1e-6 (a generator that
    barely hears position, as early in training): chosen logits differ only below float32's resolution, so ranking
    them in float64 gives other samples than the reference's float32 ranking. Both guidance paths sample the
    reference's ids."""
    name = "MaskGIT-ViT:TiTok-L-32"
    torch.manual_seed(0)
    model = models.build(name).double().eval()
    with torch.no_grad():
        model.embeddings.position.weight.mul_(1e-6)
    labels, c, released = torch.tensor(LABELS), model.config, model.config.sampler
    logits = RowLogits(model)
    batched = model.generate(labels, batch_guidance=True, forward=logits, randomize_temperature=0.0)
    separate = model.generate(labels, forward=logits, randomize_temperature=0.0)
    reference = dict(
        num_steps=released.num_steps,
        guidance_scale=released.guidance_scale,
        guidance_decay=released.guidance_decay,
        guidance_scale_pow=released.guidance_scale_pow,
        softmax_temperature_annealing=released.softmax_temperature_annealing,
    )
    expected = reference_tokens(logits, labels, c.num_tokens, model.mask_token_id, **reference)
    ranked_in_float64 = reference_tokens(
        logits, labels, c.num_tokens, model.mask_token_id, **reference, rank_dtype=torch.float64
    )
    assert not torch.equal(ranked_in_float64, expected)  # the case has float32 ties that change the samples
    assert torch.equal(batched, expected)
    assert torch.equal(separate, expected)
