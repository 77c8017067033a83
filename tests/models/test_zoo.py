"""Round trips for each tokenizer family at 256 and 512 px, own-checkpoint save/load, the loaders for
hub-style folders and raw .bin files, the mismatch error, and the registry's names."""

import pytest
import torch
from safetensors.torch import load_file

import models
from models import VARIANTS, CheckpointMismatchError, build, from_pretrained
from models.maskgit_vqgan import VQGANConfig
from models.official_layout import to_official
from tests.reference import PARITY

TOY = dict(encoder_size="toy-S", decoder_size="toy-S")
SMALL_VQGAN = VQGANConfig(hidden_channels=32)

FAMILIES = {
    "two-stage VQ": ("TiTok-S-32", dict(TOY, vqgan=SMALL_VQGAN)),
    "single-stage VQ": ("TiTok-SL-64-VQ", TOY),
    "single-stage VAE": ("TiTok-BL-64-VAE", TOY),
    "TA-TiTok VQ": ("TA-TiTok-BL-32-VQ", dict(TOY, text_dim=32)),
}


def toy(name, resolution, **extra):
    overrides = dict(FAMILIES[name][1], **extra)
    return build(FAMILIES[name][0] + ("@512" if resolution == 512 else ""), **overrides).eval()


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip(family, resolution):
    torch.manual_seed(0)
    model = toy(family, resolution)
    c = model.config
    images = torch.rand(2, 3, resolution, resolution)
    text = torch.randn(2, 77, 32) if c.text_tokens else None
    tokens = model.encode(images)
    if model.is_vq:
        assert tokens.shape == (2, c.num_latent_tokens) and tokens.dtype == torch.long
        assert 0 <= tokens.min() and tokens.max() < c.codebook_size
    else:
        assert tokens.shape == (2, c.num_latent_tokens, c.token_size) and tokens.is_floating_point()
        sampled = model.encode(images, sample=True)
        assert sampled.shape == tokens.shape and not torch.equal(sampled, tokens)
    out = model.decode(tokens, text=text)
    assert out.shape == images.shape
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_text_aware_decoder_needs_text_and_others_refuse_it():
    ta, plain = toy("TA-TiTok VQ", 256), toy("single-stage VQ", 256)
    ids = torch.zeros(1, 32, dtype=torch.long)
    with pytest.raises(ValueError, match="text tokens"):
        ta.decode(ids)
    with pytest.raises(ValueError, match="not text-aware"):
        plain.decode(torch.zeros(1, 64, dtype=torch.long), text=torch.zeros(1, 77, 768))


def test_stage1_form_points_to_the_teacher():
    model = build("TiTok-S-16", pixel_decoder=False, **TOY).eval()
    ids = model.encode(torch.rand(1, 3, 256, 256))
    with pytest.raises(ValueError, match="stage-1 form"):
        model.decode(ids)
    assert model.decode_proxy_codes(ids).shape == (1, 256)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_own_checkpoint_save_load(tmp_path, family):
    torch.manual_seed(0)
    model = toy(family, 256)
    path = tmp_path / "model.safetensors"
    models.save(model, path, metadata={"step": "7"})
    loaded = from_pretrained(path)  # the file alone rebuilds the model
    assert loaded.config == model.config
    images = torch.rand(1, 3, 256, 256)
    text = torch.randn(1, 77, 32) if model.config.text_tokens else None
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images), text=text), model.decode(model.encode(images), text=text))


def test_own_generator_checkpoint(tmp_path):
    gen = build(
        "MaskGIT-UViT", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, num_tokens=8, codebook_size=32
    ).eval()
    models.save(gen, tmp_path / "g.safetensors")
    loaded = models.load(tmp_path / "g.safetensors")
    labels = torch.tensor([1, 2])
    assert loaded.config == gen.config
    assert torch.equal(
        loaded.generate(labels, generator=torch.Generator().manual_seed(0)),
        gen.generate(labels, generator=torch.Generator().manual_seed(0)),
    )


def test_raw_bin_with_position_ids_buffer(tmp_path):
    """A raw official .bin (no config) loads; the BERT position_ids buffer may be present."""
    state = load_file(str(PARITY / "generator_vit" / "model.safetensors"))
    state["model.embeddings.position_ids"] = torch.arange(9).unsqueeze(0)
    torch.save(state, tmp_path / "generator.bin")
    model = from_pretrained(tmp_path / "generator.bin")
    io = load_file(str(PARITY / "generator_vit" / "io.safetensors"))
    assert (model(io["input_ids"], io["condition"]) - io["logits_cond"]).abs().max() < 1e-4
    # and our weights map back to the file's official names (minus the buffer)
    state.pop("model.embeddings.position_ids")
    assert set(to_official(model.state_dict(), model)) == set(state)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    folder = PARITY / "titok_singlestage_vq"
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(folder, variant="TiTok-BL-64-VQ")
    text = str(err.value)
    assert "shape conflicts (" in text and "checkpoint [17, 128] vs model [257, 1024]" in text
    assert ("latent_tokens", (16, 128), (64, 768)) in err.value.conflicts
    assert "missing keys (384)" in text  # the tiny checkpoint has 2 + 2 blocks, BL-64 has 12 + 24
    state = load_file(str(folder / "model.safetensors"))
    state.pop("decoder.conv_out.weight")
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(tmp_path / "broken.bin")
    assert "missing keys (1): decoder.conv_out.weight" in str(err.value)
    assert "unexpected keys (1): decoder.extra.weight" in str(err.value)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a checkpoint"):
        from_pretrained(tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError, match="neither a file"):
        from_pretrained("no such thing")


def test_offline_hub_error_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
        from_pretrained("TiTok-L-32")


def test_registry_names():
    grid = [f"TiTok-{s}-{k}" for s in "SBL" for k in (16, 32, 64, 96, 128, 192, 256)]
    assert set(grid) <= set(VARIANTS)
    for name in [
        "TiTok-L-32",
        "TiTok-B-64",
        "TiTok-S-128",
        "TiTok-BL-64-VQ",
        "TiTok-BL-128-VQ",
        "TiTok-SL-256-VQ",
        "TiTok-LL-32-VAE",
        "TiTok-BL-64-VAE",
        "TiTok-BL-128-VAE",
        "MaskGIT-ViT:TiTok-L-32",
        "MaskGIT-ViT:TiTok-B-64",
        "MaskGIT-UViT:TiTok-S-128",
        "TA-TiTok-SL-128-VAE",
        "MaskGIT-VQGAN",
    ]:
        assert VARIANTS[name].released, name
    for name in ["TiTok-L-64@512", "TiTok-B-128@512"]:
        assert not VARIANTS[name].released and VARIANTS[name].config.image_size == 512
    c = models.resolve("TiTok-BL-64-VQ").config
    sizes = (c.encoder_size, c.decoder_size, c.num_latent_tokens, c.codebook_size, c.token_size)
    assert sizes == ("B", "L", 64, 8192, 64)
    assert models.resolve("TiTok-L-48").config.num_latent_tokens == 48  # any K
    assert VARIANTS["MaskGIT-ViT:TiTok-B-64"].config.sampler.randomize_temperature == 11.0


def test_bad_names_and_overrides():
    with pytest.raises(ValueError, match="unknown model name 'TiTok-X-32'"):
        build("TiTok-X-32")
    with pytest.raises(TypeError, match="unknown TiTokConfig fields"):
        build("TiTok-S-32", widht=3)
    with pytest.raises(ValueError, match="unknown model size"):
        build("TiTok-S-32", encoder_size="XL")
    with pytest.raises(ValueError, match="does not divide"):
        build("TiTok-S-32", patch_size=15)


def test_sampler_noise_is_finite_and_per_row():
    """The Gumbel noise is finite, a seed changes the samples, and per-row generators make a sample independent
    of its batch."""
    from models.sampling import _gumbel

    noise = _gumbel((4, 8, 16), torch.zeros(1), torch.Generator().manual_seed(0))
    assert torch.isfinite(noise).all() and noise.std() > 0.5
    gen = build(
        "MaskGIT-ViT", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, num_tokens=8, codebook_size=32
    ).eval()
    labels = torch.tensor([1, 2, 3])
    rows = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    batched = gen.generate(labels, generator=rows())
    alone = torch.cat([gen.generate(labels[i : i + 1], generator=[torch.Generator().manual_seed(i)]) for i in range(3)])
    assert torch.equal(batched, alone)
    assert not torch.equal(batched, gen.generate(labels, generator=torch.Generator().manual_seed(7)))


def test_sampler_ranks_confidences_in_float32_as_the_reference():
    """float64 logits: the token argmax sees differences below float32's resolution, but the confidences are ranked
    in float32, so positions whose chosen logits tie there are all re-masked together (the reference's `<=` rule),
    not only the re-mask count of them."""
    from models.sampling import SamplerSettings, sample_tokens

    masked_per_call = []

    def logits_fn(ids, drop_labels):
        masked_per_call.append((ids == 3).sum(-1).tolist())
        logits = torch.ones(*ids.shape, 3, dtype=torch.float64)
        logits[..., 1] += 1e-12  # the argmax winner in float64; 1 + 1e-12 rounds to 1 in float32
        # chosen logits 1 + j * 1e-12: distinct in float64, all equal to 1 in float32
        logits[..., 1] += torch.arange(ids.shape[1], dtype=torch.float64) * 1e-12
        return logits

    # K=4, 2 steps: step 0 re-masks floor(4 acos(0.5) / (pi/2)) = 2 by count, every tied position by the rule
    ids = sample_tokens(
        logits_fn, 2, 4, mask_id=3, settings=SamplerSettings(num_steps=2, guidance_scale=0.0, randomize_temperature=0.0)
    )
    assert masked_per_call == [[4, 4], [4, 4]]  # float64 ranking would have left [2, 2] masked for step 1
    assert (ids == 1).all()


def test_sampler_remask_count_is_the_first_rows():
    """After a tie in row 1's confidences masks more of it than of row 0, the next re-mask count is still row 0's
    (as the reference's mask_len[0]), not row 1's own."""
    from models.sampling import SamplerSettings, sample_tokens

    masked_per_call = []

    def logits_fn(ids, drop_labels):
        masked_per_call.append((ids == 5).sum(-1).tolist())
        logits = torch.zeros(*ids.shape, 5)
        logits[0, :, 0] = torch.arange(ids.shape[1], dtype=torch.float32)  # row 0: distinct confidences
        if len(masked_per_call) > 1:  # row 1: all equal at step 0 (a tie), distinct later
            logits[1, :, 0] = torch.arange(ids.shape[1], dtype=torch.float32)
        return logits

    # K=4, 8 steps: re-mask targets floor(4 acos(r) / (pi/2)) = 3, 3, ...
    sample_tokens(
        logits_fn, 2, 4, mask_id=5, settings=SamplerSettings(num_steps=8, guidance_scale=0.0, randomize_temperature=0.0)
    )
    assert masked_per_call[1] == [3, 4]  # the tie masked all of row 1 again
    assert masked_per_call[2] == [2, 2]  # per-row counts would have left row 1 with 3
