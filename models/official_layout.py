"""The official (reference) checkpoints' layout: their key names and the architecture they describe.

One key-mapping layer (`from_official` / `to_official`) translates between the official key names and ours; the
architecture comes from the official config.json where there is one and from the tensor shapes otherwise
(`infer_config`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .generators import GeneratorConfig
from .maskgit_vqgan import VQGANConfig
from .sizes import VIT_SIZES
from .titok import TiTokConfig
from .variants import VARIANTS, Variant

# ---- the key-mapping layer ---------------------------------------------------------------------------------
# Only the BERT-layout generator is renamed (and its separate q/k/v fused); TiTok, MaskGIT-VQGAN and U-ViT
# use the official names as they are. Pairs of (official prefix, our prefix); {i} is a layer index.
_BERT_NAMES = [
    ("model.embeddings.word_embeddings.", "embeddings.word."),
    ("model.embeddings.position_embeddings.", "embeddings.position."),
    ("model.embeddings.token_type_embeddings.", "embeddings.token_type."),
    ("model.embeddings.LayerNorm.", "embeddings.norm."),
    ("model.encoder.layer.{i}.attention.output.dense.", "layers.{i}.attn_out."),
    ("model.encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attn_norm."),
    ("model.encoder.layer.{i}.intermediate.dense.", "layers.{i}.fc1."),
    ("model.encoder.layer.{i}.output.dense.", "layers.{i}.fc2."),
    ("model.encoder.layer.{i}.output.LayerNorm.", "layers.{i}.out_norm."),
    ("model.lm_head.", "lm_head."),
]
_BERT_QKV = re.compile(r"model\.encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_OURS_QKV = re.compile(r"layers\.(\d+)\.qkv\.(weight|bias)$")
_IGNORED_OFFICIAL = {"model.embeddings.position_ids"}  # a buffer some transformers versions saved


def _rename(key: str, pairs) -> str:
    for src, dst in pairs:
        m = re.match(re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)"), key)
        if m:
            return dst.format(i=m.groupdict().get("i")) + key[m.end() :]
    return key  # unknown keys are left for the mismatch report


def is_bert_layout(keys) -> bool:
    return any(k.startswith("model.encoder.layer.") or k.startswith("model.embeddings.") for k in keys)


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state_dict -> our names (tensors are not copied unless fused)."""
    state = {k: v for k, v in state.items() if k not in _IGNORED_OFFICIAL}
    if not is_bert_layout(state):
        return dict(state)
    out, qkv = {}, {}
    for key, value in state.items():
        m = _BERT_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[_rename(key, _BERT_NAMES)] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"layers.{layer}.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:
            out.update({f"model.encoder.layer.{layer}.attention.self.{p}.{kind}": v for p, v in parts.items()})
    return out


def to_official(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state_dict -> official names (the inverse of `from_official`)."""
    if not (isinstance(getattr(model, "config", None), GeneratorConfig) and model.config.arch == "vit"):
        return dict(state)
    inverse = [(ours, official) for official, ours in _BERT_NAMES]
    out = {}
    for key, value in state.items():
        m = _OURS_QKV.match(key)
        if m:
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"model.encoder.layer.{m[1]}.attention.self.{part}.{m[2]}"] = chunk
        else:
            out[_rename(key, inverse)] = value
    return out


# ---- architecture from an official config and/or the tensor shapes ------------------------------------------
def _resolve_interpolations(cfg: dict) -> dict:
    """Resolve OmegaConf-style `${a.b.c}` references in an official config.json (dumped unresolved)."""

    def lookup(path):
        node = cfg
        for part in path.split("."):
            node = node[part]
        return node

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            m = re.fullmatch(r"\$\{([^}]+)\}", node)
            if m:
                return walk(lookup(m[1]))
        return node

    return walk(cfg)


def _size_name(width: int, depth: int) -> str:
    for name, size in VIT_SIZES.items():
        if (size.width, size.depth) == (width, depth):
            return name
    raise ValueError(
        f"no model size with width {width} and depth {depth}; known: "
        + ", ".join(f"{n}={s.width}x{s.depth}" for n, s in VIT_SIZES.items())
    )


def _count_layers(shapes, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m[1]) for k in shapes if (m := pat.match(k))})


def detect_kind(keys) -> str:
    keys = set(keys)
    if "latent_tokens" in keys:
        return "tokenizer"
    if "lm_head.weight" in keys or "model.lm_head.weight" in keys:
        return "generator"
    if "encoder.conv_in.weight" in keys and "quantize.embedding.weight" in keys:
        return "teacher"
    raise ValueError(
        "cannot tell what this checkpoint is: it has neither TiTok (latent_tokens), generator "
        "(lm_head) nor MaskGIT-VQGAN (encoder.conv_in + quantize) keys"
    )


def _vqgan_config(shapes: dict, prefix: str, quant_prefix: str) -> VQGANConfig:
    levels = _count_layers(shapes, f"{prefix}up.")
    widths = [shapes[f"{prefix}up.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    hidden = widths[0]
    return VQGANConfig(
        hidden_channels=hidden,
        channel_mult=tuple(w // hidden for w in widths),
        num_res_blocks=_count_layers(shapes, f"{prefix}up.0.block."),
        z_channels=shapes[f"{prefix}conv_in.weight"][1],
        codebook_size=shapes[f"{quant_prefix}embedding.weight"][0],
    )


def infer_config(shapes: dict[str, tuple], official: dict | None = None):
    """Model config of an official checkpoint from its shapes (our key names) and its config.json if any.

    Shapes fix all sizes; the official config adds what shapes cannot tell (l2 normalisation, attention
    heads, sampler settings). Without a config the released families' conventions apply.
    """
    official = _resolve_interpolations(official or {})
    model_cfg = official.get("model", official)
    kind = detect_kind(shapes)
    if kind == "teacher":
        return _vqgan_config(shapes, "decoder.", "quantize.")
    if kind == "generator":
        gen = model_cfg.get("generator", {})
        uvit = "pos_embed" in shapes
        hidden = shapes["lm_head.weight"][1]
        codebook = shapes["lm_head.weight"][0]
        vocab = shapes["embeddings.weight" if uvit else "embeddings.word.weight"][0]
        tokens = (shapes["pos_embed"][1] if uvit else shapes["embeddings.position.weight"][0]) - 1
        layers = 2 * _count_layers(shapes, "in_blocks.") if uvit else _count_layers(shapes, "layers.")
        fc1 = "in_blocks.0.mlp.fc1.weight" if uvit else "layers.0.fc1.weight"
        released = _released_generator(uvit, hidden, layers, tokens, codebook)
        base = released.config if released else GeneratorConfig()
        sampler = base.sampler.updated(
            **{
                ours: gen[theirs]
                for theirs, ours in (
                    ("num_steps", "num_steps"),
                    ("guidance_scale", "guidance_scale"),
                    ("guidance_decay", "guidance_decay"),
                    ("randomize_temperature", "randomize_temperature"),
                )
                if theirs in gen
            }
        )
        return GeneratorConfig(
            arch="uvit" if uvit else "vit",
            hidden_size=hidden,
            num_layers=layers,
            num_heads=gen.get("num_attention_heads", base.num_heads if released else max(1, hidden // 64)),
            intermediate_size=shapes[fc1][0],
            dropout=gen.get("dropout", base.dropout),
            attn_dropout=gen.get("attn_drop", base.attn_dropout),
            codebook_size=codebook,
            num_tokens=tokens,
            num_classes=vocab - codebook - 2,
            class_label_dropout=gen.get("class_label_dropout", 0.1),
            sampler=sampler,
        )
    vq = model_cfg.get("vq_model", model_cfg)
    enc_w = shapes["latent_tokens"][1]
    dec_w = shapes["decoder.latent_token_positional_embedding"][1]
    patch = shapes["encoder.patch_embed.weight"][-1]
    grid = round((shapes["encoder.positional_embedding"][0] - 1) ** 0.5)
    image_size = grid * patch
    crop = official.get("dataset", {}).get("preprocessing", {}).get("crop_size")
    if crop is not None and crop != image_size:
        raise ValueError(f"config.json says crop_size {crop} but the weights are for {image_size} px")
    two_stage = "decoder.ffn.2.weight" in shapes
    dec_grid = round((shapes["decoder.positional_embedding"][0] - 1) ** 0.5)
    is_vq = "quantize.embedding.weight" in shapes
    legacy = vq.get("is_legacy", two_stage)  # the reference defaults is_legacy to True when absent
    text = shapes.get("decoder.text_guidance_positional_embedding")
    return TiTokConfig(
        encoder_size=_size_name(enc_w, _count_layers(shapes, "encoder.transformer.")),
        decoder_size=_size_name(dec_w, _count_layers(shapes, "decoder.transformer.")),
        num_latent_tokens=shapes["latent_tokens"][0],
        image_size=image_size,
        patch_size=patch,
        decoder_patch_size=image_size // dec_grid,
        quantizer="vq" if is_vq else "vae",
        token_size=shapes["decoder.decoder_embed.weight"][1],
        codebook_size=shapes["quantize.embedding.weight"][0] if is_vq else 0,
        use_l2_norm=bool(vq.get("use_l2_norm", two_stage)) if is_vq else False,
        commitment_cost=vq.get("commitment_cost", 0.25),
        two_stage=two_stage,
        pixel_decoder="pixel_decoder.conv_in.weight" in shapes,
        legacy_reshape=bool(legacy) and two_stage,
        vqgan=_vqgan_config(shapes, "pixel_decoder.", "pixel_quantize.")
        if "pixel_decoder.conv_in.weight" in shapes
        else VQGANConfig(),
        text_tokens=text[0] if text else 0,
        text_dim=shapes["decoder.text_guidance_proj.weight"][1] if text else 768,
    )


def _released_generator(uvit: bool, hidden: int, layers: int, tokens: int, codebook: int) -> Variant | None:
    for v in VARIANTS.values():
        c = v.config
        if (
            v.kind == "generator"
            and v.released
            and (c.arch == "uvit") == uvit
            and (c.hidden_size, c.num_layers, c.num_tokens, c.codebook_size) == (hidden, layers, tokens, codebook)
        ):
            return v
    return None
