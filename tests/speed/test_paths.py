"""bench.speed.paths on toy sizes: the parity path equals the reference sampler and the models' own encode/decode
exactly, the fast paths stay within measured quality bounds of it (compare_with_parity), and on CUDA the sampling
loop from CUDA graphs equals eager parity. Correctness only: no timing assertions."""

import pytest
import torch

from bench.speed import factories
from bench.speed.options import InferenceOptions, fast_options
from bench.speed.paths import InferencePipeline, compare_with_parity
from tests.speed.toys import BF16, rng, toy_pair

# Bounds of the bf16 fast path against fp32 on these toy models with random weights, with margin over what seeds
# 0-3 reach (docs/measurements.md). Random weights make VQ assignments near-ties, so the encode agreement is the
# loosest.
MIN_TOKEN_AGREEMENT = 0.9
MIN_IMAGE_PSNR = 30.0
MIN_ENCODE_AGREEMENT = 0.85
MIN_SINGLE_STAGE_PSNR = 60.0
MAX_VAE_REL_ERROR = 0.02


# ---- parity path ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generator,steps", [("MaskGIT-ViT:TiTok-L-32", None), ("MaskGIT-UViT:TiTok-S-128", 6)])
@pytest.mark.parametrize("mode", ["naive", "parity"])
def test_exact_modes_equal_reference_sampler(generator, steps, mode):
    tok, gen = toy_pair(generator=generator)
    settings = gen.config.sampler if steps is None else gen.config.sampler.updated(num_steps=steps)
    labels = torch.tensor([0, 7, 3])
    ids, images = InferencePipeline(tok, gen, options=mode).generate(labels, settings, rng(1))
    reference = gen.generate(labels, generator=rng(1), **settings.__dict__)  # separate cond/uncond passes
    assert torch.equal(ids, reference)
    assert torch.equal(images, tok.decode(reference))


def test_exact_options_equal_reference_with_every_cpu_switch():
    """fp32 switches that only change layout or bookkeeping (channels-last copies, weight copies) are exact."""
    tok, gen = toy_pair()
    labels = torch.tensor([1, 2])
    options = InferenceOptions(cast_weights=True, channels_last=True)
    ids, images = InferencePipeline(tok, gen, options=options).generate(labels, rng=rng(2))
    assert torch.equal(ids, gen.generate(labels, generator=rng(2)))
    assert torch.equal(images, tok.decode(ids))


@pytest.mark.parametrize(
    "name,extra", [("TiTok-BL-64-VQ", {}), ("TiTok-BL-64-VAE", {}), ("TA-TiTok-BL-32-VQ", {}), ("TiTok-S-32", {})]
)
def test_parity_encode_decode_equal_model(name, extra):
    torch.manual_seed(0)
    tok = factories.build_tokenizer(name, extra, toy=True)
    c = tok.config
    images = torch.rand(2, 3, c.image_size, c.image_size)
    text = torch.randn(2, c.text_tokens, c.text_dim) if c.text_tokens else None
    pipe = InferencePipeline(tok, options="parity")
    tokens = pipe.encode(images)
    assert torch.equal(tokens, tok.encode(images))
    assert torch.equal(pipe.decode(tokens, text), tok.decode(tokens, text=text))


def test_stage1_form_decodes_through_the_teacher():
    torch.manual_seed(0)
    tok = factories.build_tokenizer("TiTok-L-32", {"pixel_decoder": False}, toy=True)
    teacher = factories.teacher_for(tok)
    assert teacher is not None and not tok.outputs_pixels
    ids = torch.randint(0, tok.config.codebook_size, (2, tok.config.num_latent_tokens))
    expected = teacher.decode(tok.decode_proxy_codes(ids))
    assert torch.equal(InferencePipeline(tok, options="parity", teacher=teacher).decode(ids), expected)
    with pytest.raises(ValueError, match="teacher"):
        InferencePipeline(tok, options="parity").decode(ids)


def test_pipeline_leaves_the_models_untouched():
    tok, gen = toy_pair()
    before = {k: v.clone() for k, v in [*tok.state_dict().items(), *gen.state_dict().items()]}
    pipe = InferencePipeline(tok, gen, options=fast_options())
    pipe.generate(torch.tensor([0, 1]), rng=rng())
    after = {**tok.state_dict(), **gen.state_dict()}
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert tok.pixel_decoder.conv_in.weight.is_contiguous()


# ---- fast path quality ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generator,steps", [("MaskGIT-ViT:TiTok-L-32", None), ("MaskGIT-UViT:TiTok-S-128", 8)])
def test_fast_path_generation_quality(generator, steps):
    tok, gen = toy_pair(generator=generator)
    settings = gen.config.sampler if steps is None else gen.config.sampler.updated(num_steps=steps)
    q = compare_with_parity(tok, gen, options=BF16, batch_size=8, seed=0, sampler_settings=settings)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT
    assert q["image_psnr_db"] >= MIN_IMAGE_PSNR
    assert q["decode_psnr_db"] >= MIN_IMAGE_PSNR
    assert q["encode_agreement"] >= MIN_ENCODE_AGREEMENT


def test_fast_path_single_stage_quality():
    torch.manual_seed(0)
    q = compare_with_parity(factories.build_tokenizer("TiTok-BL-64-VQ", toy=True), options=BF16, batch_size=8)
    assert q["decode_psnr_db"] >= MIN_SINGLE_STAGE_PSNR and q["encode_agreement"] >= MIN_ENCODE_AGREEMENT
    q = compare_with_parity(factories.build_tokenizer("TiTok-BL-64-VAE", toy=True), options=BF16, batch_size=8)
    assert q["decode_psnr_db"] >= MIN_SINGLE_STAGE_PSNR and q["encode_rel_error"] <= MAX_VAE_REL_ERROR


def test_parity_against_itself_is_perfect():
    tok, gen = toy_pair()
    q = compare_with_parity(tok, gen, options="parity", batch_size=2)
    assert q == {
        "token_agreement": 1.0,
        "image_psnr_db": float("inf"),
        "decode_psnr_db": float("inf"),
        "encode_agreement": 1.0,
    }


# ---- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_fp32_equal_eager_and_fast_quality():
    tok, gen = toy_pair()
    tok, gen = tok.cuda(), gen.cuda()
    labels = torch.arange(4, device="cuda")
    exact = InferencePipeline(tok, gen, options="parity")
    graphed = InferencePipeline(tok, gen, options=InferenceOptions(cuda_graphs=True))
    ids, images = exact.generate(labels, rng=torch.Generator("cuda").manual_seed(0))
    ids_g, images_g = graphed.generate(labels, rng=torch.Generator("cuda").manual_seed(0))
    assert torch.equal(ids, ids_g) and torch.equal(images, images_g)
    q = compare_with_parity(tok, gen, options="fast", batch_size=8)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT and q["image_psnr_db"] >= MIN_IMAGE_PSNR
    assert InferencePipeline(tok, gen, options="auto").choice.mode == "fast"  # CUDA: fast passes the guard


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_path_quality_on_cuda():
    tok, gen = toy_pair()
    q = compare_with_parity(tok.cuda(), gen.cuda(), options="compiled", batch_size=4)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT and q["image_psnr_db"] >= MIN_IMAGE_PSNR
