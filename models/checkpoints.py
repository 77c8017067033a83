"""Checkpoint IO: released (official) checkpoints and the project's own.

Official checkpoints come as a hub repo (config.json + model.safetensors), a local folder laid out the
same way, or a raw state_dict `.bin`. One key-mapping layer (`to_official` / `from_official`) translates
between the official key names and ours; the architecture comes from the official config where there is
one and from the tensor shapes otherwise.

The project's own checkpoints are safetensors files whose metadata holds the model config and a sha256 of the
tensor data, so a file rebuilds its model alone and a damaged one is refused: `save(model, path)` / `load(path)`.

Every file the project writes goes through `atomic_path` (bench/core/io.py builds its writers on it): a temporary
file beside the target, named after the target, host and PID, created with ordinary permissions (0666 & ~umask, not
mkstemp's 0600), fsynced and renamed over the target. A writer that is killed (SIGKILL, preemption) leaves its
temporary file behind; the next write of the same target removes it once its writer is gone.

The weights cache. Released weights live in one cache, $TITOK_BENCH_WEIGHTS (default ~/.cache/titok-bench/weights),
a hub repo in `hub/<owner>--<name>/` (bench.weights' registry uses the same folders). `from_pretrained(name or repo
id)` is the zoo's explicit front door: it fetches a missing repo there, at the commit models/hub_revisions.json pins
(`hub_fetch`; TITOK_BENCH_OFFLINE=1 or HF_HUB_OFFLINE=1 forbid it). Every fetch writes a source record beside what
it fetched (`.source.json` in a folder, `.<file>.source.json` beside a file): repo, revision asked for, commit
resolved, URL, sha256 of each file; every later load checks the files against it (`check_source`).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .generators import GeneratorConfig
from .maskgit_vqgan import VQGANConfig
from .sampling import SamplerSettings
from .sizes import VIT_SIZES
from .titok import TiTokConfig
from .variants import VARIANTS, Variant, build_from_config, pinned_revision, resolve

FORMAT = "titok-bench/1"
DIGEST_KEY = "tensors_sha256"  # in our checkpoints' metadata (files written before it have none and still load)
_CONFIG_TYPES = {"TiTokConfig": TiTokConfig, "GeneratorConfig": GeneratorConfig, "VQGANConfig": VQGANConfig}
_NESTED = {"vqgan": VQGANConfig, "sampler": SamplerSettings}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, corrupt, not the requested variant); the message names
    the file and what to do."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that does not fit the model: names the missing and unexpected keys and shape conflicts."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], conflicts: list[tuple[str, tuple, tuple]]):
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
            lines.append(
                f"  shape conflicts ({len(conflicts)}): "
                + show(f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in conflicts)
            )
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


# ---- loading into a model ---------------------------------------------------------------------------------
def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Strict load with a readable error: missing / unexpected keys and shape conflicts."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    conflicts = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or conflicts:
        raise CheckpointMismatchError(what, missing, unexpected, conflicts)
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return model


def load_official_state(
    state: dict[str, torch.Tensor], official_config: dict | None = None, variant: str | None = None
) -> nn.Module:
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


def read_config(path: Path) -> dict | None:
    """An official config.json (None when there is none)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}): repair it, download it again, or delete it to "
            "infer the architecture from the weights"
        ) from None


def read_official_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    config = read_config(folder / "config.json")
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
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {err}): it is "
            "truncated or corrupt (an interrupted copy or download?); copy it again"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors")
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


STALE_TEMP_AGE_S = 3600  # a temporary file untouched this long has no live writer, wherever it ran
_HOST = socket.gethostname()


def _temp_owner_gone(tmp: Path, prefix: str) -> bool:
    """Whether the writer of temporary file `tmp` (named <prefix><host>.<pid>.<token>.tmp) is gone: a dead PID on
    this host; a writer on another host (a requeued job lands elsewhere), or a name of another pattern, when the
    file has not been written to for STALE_TEMP_AGE_S."""
    host, _, pid = tmp.name[len(prefix) : -len(".tmp")].rpartition(".")[0].rpartition(".")
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
    try:
        return time.time() - tmp.stat().st_mtime > STALE_TEMP_AGE_S
    except FileNotFoundError:  # its writer just finished
        return False


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that killed writers of `path` left beside it; returns them."""
    prefix = f".{path.name}."
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if _temp_owner_gone(tmp, prefix):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary file beside `path` for the block to write (by name, keeping the file: a writer that
    replaces it brings its own permissions); when the block ends without an exception it is fsynced and renamed
    over `path`, and the folder fsynced; otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # before this write needs the space
    tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as to any file
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape and raw bytes (what bit rot changes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save weights + config (+ optional string metadata) as one self-describing safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "kind": model.kind,
        "config": config_to_json(model.config),
        DIGEST_KEY: tensor_digest(tensors),
        **(metadata or {}),
    }
    with atomic_path(path) as tmp:
        # bytes through our own file: save_file would write a temporary file of its own (.tmpXXXXXX, mode 0600)
        # beside it, which a killed writer leaves behind under a name nobody can attribute
        tmp.write_bytes(safetensors_bytes(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # zero bytes, a truncated header or data, not safetensors at all
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}): it is "
            "truncated or corrupt (an interrupted copy or download?); copy it again"
        ) from None


def _describe(v: Variant) -> str:
    return f"a {v.kind} with " + ", ".join(f"{k} {val}" for k, val in v.sizes().items())


def load(path: str | os.PathLike, variant: str | None = None) -> nn.Module:
    """Rebuild a model from one of the project's own checkpoint files; `variant`: it must hold that architecture."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a titok-bench checkpoint (no '{FORMAT}' metadata); "
            "for released weights use models.from_pretrained"
        )
    config = config_from_json(meta["config"])
    if variant is not None:
        held, want = Variant(path.name, meta.get("kind", "?"), config), resolve(variant)
        if (held.kind, held.sizes()) != (want.kind, want.sizes()):
            raise CheckpointError(
                f"{path} holds {_describe(held)}, not the requested {variant} ({_describe(want)}): "
                "pass the checkpoint of that variant, or no variant to load what the file holds"
            )
    state = read_state_file(path)
    if DIGEST_KEY in meta and tensor_digest(state) != meta[DIGEST_KEY]:
        raise CheckpointError(
            f"{path}: the tensor data does not match the sha256 written with it (bit rot or a "
            "damaged copy): restore the file from a good copy, or retrain it"
        )
    with torch.device("meta"):
        model = build_from_config(config)
    return load_state_into(model, state, f"its own config ({type(config).__name__})").eval()


# ---- the weights cache, hub fetches and source records ----------------------------------------------------
ENV_CACHE = "TITOK_BENCH_WEIGHTS"
ENV_OFFLINE = "TITOK_BENCH_OFFLINE"
HUB_FILES = ("config.json", "model.safetensors")  # what the hub-style folder of a released repo holds
HUB_TIMEOUT_S = 15.0  # connect and each read: an offline machine fails in seconds
SOURCE_RECORD = ".source.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def weights_cache_dir() -> Path:
    """$TITOK_BENCH_WEIGHTS or ~/.cache/titok-bench/weights (read at every call: tests may change it)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "titok-bench" / "weights"


def hub_folder_name(repo: str) -> str:
    """A hub repo's folder in the weights cache: hub/<owner>--<name>."""
    return f"hub/{repo.replace('/', '--')}"


def hub_folder(repo: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a hub repo's files live in the weights cache (or under `cache_dir`)."""
    return Path(cache_dir or weights_cache_dir()).expanduser() / hub_folder_name(repo)


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0")


def is_commit(revision: str | None) -> bool:
    return bool(revision) and _COMMIT.fullmatch(revision) is not None


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime in the key: a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, computed once per process for each version (size, mtime) of the file."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)


def source_record_path(path: str | os.PathLike) -> Path:
    """The source record of a fetched folder (inside it) or file (a hidden file beside it)."""
    p = Path(path)
    return p / SOURCE_RECORD if p.is_dir() else p.with_name(f".{p.name}{SOURCE_RECORD}")


def read_source_record(path: str | os.PathLike) -> dict | None:
    record = source_record_path(path)
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{record} is not valid JSON ({err}): delete it and fetch {path} again") from None


def write_source_record(path: str | os.PathLike, files: list[str] | None = None, **source) -> dict:
    """Record where `path` (a file, or a folder holding `files`) came from (`source`: repo, revision, commit, url)
    and the sha256 of each of its files."""
    p = Path(path)
    named = {f: p / f for f in files} if p.is_dir() else {p.name: p}
    record = {**source, "files": {name: file_sha256(f) for name, f in named.items()}}
    with atomic_path(source_record_path(p)) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def check_source(path: str | os.PathLike, pinned: str | None = None) -> dict | None:
    """The source record of `path` once its files are checked against it (None: there is none, as for files
    placed by hand). CheckpointError when a file is not the one that was fetched, or when the record's commit is
    not the commit `pinned`."""
    p = Path(path)
    record = read_source_record(p)
    if record is None:
        return None
    if is_commit(pinned) and record.get("commit") and record["commit"] != pinned:
        raise CheckpointError(
            f"{p} holds commit {record['commit']} of {record.get('repo')}, but the pin file "
            f"models/hub_revisions.json pins {pinned}: fetch it again (python -m bench.weights "
            "fetch <name>, or models.from_pretrained)"
        )
    for name, want in record.get("files", {}).items():
        f = p / name if p.is_dir() else p
        got = file_sha256(f) if f.is_file() else "missing"
        if got != want:
            raise CheckpointError(
                f"{f} is not the file that was fetched (sha256 {got[:16]}..., its source record "
                f"{source_record_path(p)} says {want[:16]}...): delete {p} and fetch it again, or "
                "delete the record if the new file is the one you mean"
            )
    return record


def hub_commit(repo: str, revision: str | None = None) -> str:
    """The commit a revision of a hub repo (None: main) resolves to; a full commit sha needs no network."""
    if is_commit(revision):
        return revision
    import huggingface_hub

    return huggingface_hub.model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S).sha


def hub_fetch(
    repo: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    files: tuple[str, ...] = HUB_FILES,
) -> Path:
    """Download `files` of a hub repo at `revision` (None: the pinned one, else main) into its hub folder and write
    its source record; FileNotFoundError saying what to do when it cannot (offline, unknown repo, no access)."""
    revision = revision or pinned_revision(repo)
    folder = hub_folder(repo, cache_dir)
    at = f" at revision {revision}" if revision else ""
    todo = (
        f"Download {' and '.join(files)} of https://huggingface.co/{repo}{at} into {folder}/ (or any folder, and "
        "pass the folder to models.from_pretrained)"
    )
    if offline():
        raise FileNotFoundError(f"not fetching {repo!r}: offline mode ({ENV_OFFLINE} is set). {todo}")
    try:
        import huggingface_hub

        commit = hub_commit(repo, revision)
        for f in files:
            huggingface_hub.hf_hub_download(repo, f, revision=commit, local_dir=folder, etag_timeout=HUB_TIMEOUT_S)
    except Exception as err:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch {repo!r}{at} from the Hugging Face hub ({type(err).__name__}: {err}). Offline? {todo}"
        ) from None
    write_source_record(
        folder,
        list(files),
        repo=repo,
        revision=revision,
        commit=commit,
        url=f"https://huggingface.co/{repo}/tree/{commit}",
    )
    return folder


# ---- the front door ----------------------------------------------------------------------------------------
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def looks_like_path(text: str) -> bool:
    """Whether a string that names nothing here was meant as a local path rather than a hub repo id ("owner/name")
    or a variant name: it starts with '.', '~' or a separator, has more than one separator or a checkpoint file's
    suffix, or its first folder exists here."""
    parts = re.split(r"[/\\]", text)
    return (
        text.startswith((".", "~", "/", "\\"))
        or len(parts) > 2
        or Path(text).suffix in _FILE_SUFFIXES
        or (len(parts) > 1 and Path(parts[0]).is_dir())
    )


def _hub_download(repo: str, cache_dir: str | None) -> Path:
    """The repo's folder in the weights cache, its files checked against their source record; fetched (hub_fetch)
    when a file is missing or the record holds another commit than the pinned one."""
    folder = hub_folder(repo, cache_dir)
    pinned = pinned_revision(repo)
    if all((folder / f).is_file() for f in HUB_FILES):
        record = read_source_record(folder)
        if not (record and is_commit(pinned) and record.get("commit") != pinned):
            check_source(folder)
            return folder
    return hub_fetch(repo, pinned, cache_dir)


def from_pretrained(
    name_or_path: str | os.PathLike, variant: str | None = None, cache_dir: str | os.PathLike | None = None
) -> nn.Module:
    """Load released or own weights, in eval mode.

    name_or_path: a registered variant name with released weights or a hub repo id ("owner/name"): read from the
    weights cache (hub_folder), fetched there first, at the pinned commit, when missing (the zoo's explicit front
    door; the benchmark's stages never fetch: they resolve files through bench.weights); a hub-style folder
    (config.json + model.safetensors), an official raw state_dict file (.bin/.pt/.pth/.safetensors), or one of the
    project's own checkpoint files. A folder or file with a source record is checked against it (check_source).
    variant: check the weights against this registered architecture instead of inferring it.
    cache_dir: the weights cache to use instead of $TITOK_BENCH_WEIGHTS.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        check_source(path)
    if path.is_dir():
        state, config = read_official_folder(path)
        return load_official_state(state, config, variant)
    if path.is_file():
        if path.suffix == ".safetensors" and read_metadata(path).get("format") == FORMAT:
            return load(path, variant)
        return load_official_state(read_state_file(path), read_config(path.parent / "config.json"), variant)
    if text in VARIANTS:
        v = VARIANTS[text]
        if not v.hub_repo:
            raise ValueError(
                f"{text} has no released weights on the hub"
                + (f" (the raw file {v.official_file} can be loaded by path)" if v.official_file else "")
                + f"; build it untrained with models.build({text!r})"
            )
        state, config = read_official_folder(_hub_download(v.hub_repo, cache_dir))
        return load_official_state(state, config, variant or text)
    if looks_like_path(text):
        raise FileNotFoundError(f"no such file or folder: {path.absolute()}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        state, config = read_official_folder(_hub_download(text, cache_dir))
        return load_official_state(state, config, variant)
    raise FileNotFoundError(
        f"{text!r} is neither a file, a folder, a registered variant with released weights "
        "nor a hub repo id (owner/name)"
    )
