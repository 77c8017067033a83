"""Checkpoint IO: released (official) checkpoints and the project's own.

Official checkpoints come as a hub repo (config.json + model.safetensors), a local folder laid out the
same way, or a raw state_dict `.bin`. One key-mapping layer (`to_official` / `from_official`) translates
between the official key names and ours; the architecture comes from the official config where there is
one and from the tensor shapes otherwise.

The project's own checkpoints are safetensors files whose metadata holds the model config, so a file
rebuilds its model alone: `save(model, path)` / `load(path)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .generators import GeneratorConfig
from .maskgit_vqgan import VQGANConfig
from .sampling import SamplerSettings
from .sizes import VIT_SIZES
from .titok import TiTokConfig
from .variants import VARIANTS, Variant, build_from_config, resolve

FORMAT = "titok-bench/1"
_CONFIG_TYPES = {"TiTokConfig": TiTokConfig, "GeneratorConfig": GeneratorConfig, "VQGANConfig": VQGANConfig}
_NESTED = {"vqgan": VQGANConfig, "sampler": SamplerSettings}


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model: names the missing and unexpected keys and shape conflicts."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str],
                 conflicts: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.conflicts = missing, unexpected, conflicts

        def show(items, n=12):
            items = list(items)
            more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(map(str, items[:n])) + more

        lines = [f"checkpoint does not fit {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if conflicts:
            lines.append(f"  shape conflicts ({len(conflicts)}): " + show(
                f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in conflicts))
        super().__init__("\n".join(lines))


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
            return dst.format(i=m.groupdict().get("i")) + key[m.end():]
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
    raise ValueError(f"no model size with width {width} and depth {depth}; known: "
                     + ", ".join(f"{n}={s.width}x{s.depth}" for n, s in VIT_SIZES.items()))


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
    raise ValueError("cannot tell what this checkpoint is: it has neither TiTok (latent_tokens), generator "
                     "(lm_head) nor MaskGIT-VQGAN (encoder.conv_in + quantize) keys")


def _vqgan_config(shapes: dict, prefix: str, quant_prefix: str) -> VQGANConfig:
    levels = _count_layers(shapes, f"{prefix}up.")
    widths = [shapes[f"{prefix}up.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    hidden = widths[0]
    return VQGANConfig(hidden_channels=hidden, channel_mult=tuple(w // hidden for w in widths),
                       num_res_blocks=_count_layers(shapes, f"{prefix}up.0.block."),
                       z_channels=shapes[f"{prefix}conv_in.weight"][1],
                       codebook_size=shapes[f"{quant_prefix}embedding.weight"][0])


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
        sampler = base.sampler.updated(**{ours: gen[theirs] for theirs, ours in (
            ("num_steps", "num_steps"), ("guidance_scale", "guidance_scale"), ("guidance_decay", "guidance_decay"),
            ("randomize_temperature", "randomize_temperature")) if theirs in gen})
        return GeneratorConfig(
            arch="uvit" if uvit else "vit", hidden_size=hidden, num_layers=layers,
            num_heads=gen.get("num_attention_heads", base.num_heads if released else max(1, hidden // 64)),
            intermediate_size=shapes[fc1][0], dropout=gen.get("dropout", base.dropout),
            attn_dropout=gen.get("attn_drop", base.attn_dropout), codebook_size=codebook, num_tokens=tokens,
            num_classes=vocab - codebook - 2, class_label_dropout=gen.get("class_label_dropout", 0.1),
            sampler=sampler)
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
        num_latent_tokens=shapes["latent_tokens"][0], image_size=image_size, patch_size=patch,
        decoder_patch_size=image_size // dec_grid, quantizer="vq" if is_vq else "vae",
        token_size=shapes["decoder.decoder_embed.weight"][1],
        codebook_size=shapes["quantize.embedding.weight"][0] if is_vq else 0,
        use_l2_norm=bool(vq.get("use_l2_norm", two_stage)) if is_vq else False,
        commitment_cost=vq.get("commitment_cost", 0.25), two_stage=two_stage,
        pixel_decoder="pixel_decoder.conv_in.weight" in shapes, legacy_reshape=bool(legacy) and two_stage,
        vqgan=_vqgan_config(shapes, "pixel_decoder.", "pixel_quantize.")
        if "pixel_decoder.conv_in.weight" in shapes else VQGANConfig(),
        text_tokens=text[0] if text else 0,
        text_dim=shapes["decoder.text_guidance_proj.weight"][1] if text else 768)


def _released_generator(uvit: bool, hidden: int, layers: int, tokens: int, codebook: int) -> Variant | None:
    for v in VARIANTS.values():
        c = v.config
        if v.kind == "generator" and v.released and (c.arch == "uvit") == uvit and (
                c.hidden_size, c.num_layers, c.num_tokens, c.codebook_size) == (hidden, layers, tokens, codebook):
            return v
    return None


# ---- loading into a model ---------------------------------------------------------------------------------
def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Strict load with a readable error: missing / unexpected keys and shape conflicts."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    conflicts = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in sorted(set(state) & set(expected))
                 if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or conflicts:
        raise CheckpointMismatchError(what, missing, unexpected, conflicts)
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return model


def load_official_state(state: dict[str, torch.Tensor], official_config: dict | None = None,
                        variant: str | None = None) -> nn.Module:
    """Build the model an official state_dict describes (or `variant`, checked against it) and load it."""
    ours = from_official(state)
    if variant is not None:
        config = resolve(variant).config
        what = f"variant {variant!r}"
    else:
        config = infer_config({k: tuple(v.shape) for k, v in ours.items()}, official_config)
        what = f"the architecture inferred from it ({type(config).__name__})"
    with torch.device("meta"):
        model = build_from_config(config)
    load_state_into(model, ours, what)
    return model.eval()


def read_official_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return read_state_file(folder / name), config
    raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a checkpoint at all
        raise ValueError(f"{path} could not be read as a checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict of tensors")
    return state


# ---- the project's own checkpoints --------------------------------------------------------------------------
def config_to_json(config) -> str:
    return json.dumps({"type": type(config).__name__, "fields": dataclasses.asdict(config)})


def config_from_json(text: str):
    data = json.loads(text)
    cls = _CONFIG_TYPES[data["type"]]
    fields = dict(data["fields"])
    for name, nested in _NESTED.items():
        if name in fields:
            fields[name] = nested(**fields[name])
    if "vqgan" in fields:
        fields["vqgan"] = dataclasses.replace(fields["vqgan"], channel_mult=tuple(fields["vqgan"].channel_mult))
    if cls is VQGANConfig:
        fields["channel_mult"] = tuple(fields["channel_mult"])
    return cls(**fields)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """safetensors write to a temporary file in the same folder, fsync, rename: never a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save weights + config (+ optional string metadata) as one self-describing safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "kind": model.kind, "config": config_to_json(model.config), **(metadata or {})}
    atomic_save_file(tensors, path, meta)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model from one of the project's own checkpoint files."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a titok-bench checkpoint (no '{FORMAT}' metadata); "
                         "for released weights use models.from_pretrained")
    config = config_from_json(meta["config"])
    with torch.device("meta"):
        model = build_from_config(config)
    return load_state_into(model, load_file(str(path)), f"its own config ({type(config).__name__})").eval()


# ---- the front door ----------------------------------------------------------------------------------------
def _hub_download(repo: str, cache_dir: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["config.json", "*.safetensors"], cache_dir=cache_dir))
    except Exception as err:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch {repo!r} from the Hugging Face hub ({type(err).__name__}: {err}). Offline? Download "
            f"config.json and model.safetensors of https://huggingface.co/{repo} into a folder and pass the folder "
            "to models.from_pretrained") from None


def from_pretrained(name_or_path: str | os.PathLike, variant: str | None = None,
                    cache_dir: str | None = None) -> nn.Module:
    """Load released or own weights, in eval mode.

    name_or_path: a registered variant name with released weights (fetched from its hub repo), a hub repo id
    ("owner/name"), a hub-style folder (config.json + model.safetensors), an official raw state_dict file
    (.bin/.pt/.pth/.safetensors), or one of the project's own checkpoint files.
    variant: check the weights against this registered architecture instead of inferring it.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        state, config = read_official_folder(path)
        return load_official_state(state, config, variant)
    if path.is_file():
        if path.suffix == ".safetensors" and read_metadata(path).get("format") == FORMAT:
            return load(path)
        sibling = path.parent / "config.json"
        config = json.loads(sibling.read_text()) if sibling.exists() else None
        return load_official_state(read_state_file(path), config, variant)
    if text in VARIANTS:
        v = VARIANTS[text]
        if not v.hub_repo:
            raise ValueError(f"{text} has no released weights on the hub"
                             + (f" (the raw file {v.official_file} can be loaded by path)" if v.official_file else "")
                             + f"; build it untrained with models.build({text!r})")
        state, config = read_official_folder(_hub_download(v.hub_repo, cache_dir))
        return load_official_state(state, config, variant or text)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        state, config = read_official_folder(_hub_download(text, cache_dir))
        return load_official_state(state, config, variant)
    raise FileNotFoundError(f"{text!r} is neither a file, a folder, a registered variant with released weights "
                            "nor a hub repo id (owner/name)")
