"""Loading the models that stages train from or evaluate: released weights (from the weights cache), our own
checkpoints, hub-style folders, official files, and seeded random stand-ins where allowed.

    tok = load_model("TiTok-L-32", "tokenizer", allow_random=False)   # Loaded(model, random, label)
    gen = load_generator("MaskGIT-ViT:TiTok-L-32", tok.model, allow_random=False)
    teacher = load_eval_teacher(tok.model)                             # None unless the tokenizer is in stage-1 form
    vqgan, random = load_teacher("MaskGIT-VQGAN", overrides={}, allow_random=True)

A stand-in (allow_random, weights missing) is built from a fixed seed, and a checkpoint of ours that was trained
with a stand-in (metadata `random.<net>=true`) counts as one too: `Loaded.random` says so, and every number it
produces must be tagged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import models
from bench import weights

STANDIN_SEED = 0


class SetupError(ValueError):
    """Unusable input to a stage or a command (a model, a file, a setting): the message says which and what to
    do."""


@dataclass(frozen=True)
class Loaded:
    model: nn.Module
    random: bool  # a seeded random stand-in, or our checkpoint trained with one: tag every number
    label: str  # variant name or checkpoint name, for tags and sample file names


def _checkpoint_label(path: Path) -> str:
    # our stages all write model.safetensors: name it by its folders (cell and stage) instead
    if path.is_file() and path.stem == "model":
        return f"{path.parent.parent.name}-{path.parent.name}"
    return path.stem if path.is_file() else path.name


def _trained_with_standin(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    meta = models.checkpoint_format.read_metadata(path)
    return any(k.startswith("random.") and v == "true" for k, v in meta.items())


def _standin(name: str, overrides: dict) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        return models.build(name, **overrides)


def load_model(source: str, kind: str, allow_random: bool, standin_overrides: dict | None = None) -> Loaded:
    """A frozen model of `kind` ("tokenizer" or "generator") from a checkpoint path (ours, a hub-style folder,
    an official file) or a registered name. A name with released weights loads them from the weights cache
    (bench.weights: MissingWeightsError says where to put them); with allow_random, a missing file or a name
    without released weights gives a seeded stand-in built with `standin_overrides`."""
    path = Path(source).expanduser()
    if not path.exists() and models.pretrained.looks_like_path(source):
        raise SetupError(f"no such file or folder: {path.absolute()}")
    if path.exists():
        model, random, label = models.from_pretrained(path), _trained_with_standin(path), _checkpoint_label(path)
    else:
        try:
            variant = models.resolve(source)
        except ValueError as err:
            raise SetupError(f"{source!r} is not a file, a folder or a model name: {err}") from None
        if variant.kind != kind:
            raise SetupError(f"{source} is a {variant.kind}, not a {kind}")
        resolved = weights.Resolved(None, True)
        if source in weights.registry():
            resolved = weights.resolve(source, allow_random)
        elif not allow_random:
            raise SetupError(
                f"{source} has no released weights: pass a checkpoint file, or "
                "--allow-random-weights (allow_random=True) for an untrained, tagged stand-in"
            )
        if resolved.path is not None:
            model = models.from_pretrained(resolved.path, variant=source)
        else:
            model = _standin(source, standin_overrides or {})
        random, label = resolved.random, source
    if getattr(model, "kind", None) != kind:
        raise SetupError(f"{source} holds a {getattr(model, 'kind', type(model).__name__)}, not a {kind}")
    return Loaded(model.eval().requires_grad_(False), random, label)


def load_generator(source: str, tokenizer: models.TiTok, allow_random: bool) -> Loaded:
    """A MaskGIT generator that fits `tokenizer` (VQ, same K and codebook); a stand-in is sized to it."""
    if not tokenizer.is_vq:
        raise SetupError("a VAE tokenizer has no discrete tokens: MaskGIT generation needs a VQ tokenizer")
    t = tokenizer.config
    loaded = load_model(
        source, "generator", allow_random, {"num_tokens": t.num_latent_tokens, "codebook_size": t.codebook_size}
    )
    g = loaded.model.config
    if (g.num_tokens, g.codebook_size) != (t.num_latent_tokens, t.codebook_size):
        raise SetupError(
            f"generator {source} makes {g.num_tokens} tokens of {g.codebook_size} codes, but the "
            f"tokenizer has {t.num_latent_tokens} tokens of {t.codebook_size} codes"
        )
    return loaded


def load_eval_teacher(
    tokenizer: models.TiTok, source: str = weights.TEACHER, allow_random: bool = False
) -> Loaded | None:
    """The MaskGIT-VQGAN that decodes a stage-1-form tokenizer's proxy codes (None when it makes pixels itself);
    a stand-in takes the architecture in the tokenizer's config."""
    if tokenizer.outputs_pixels:
        return None
    teacher, random = load_teacher(source, dataclasses.asdict(tokenizer.config.vqgan), allow_random)
    want = tokenizer.config.vqgan
    if (teacher.config.codebook_size, teacher.config.downsample_factor) != (want.codebook_size, want.downsample_factor):
        raise SetupError(
            f"teacher {source} has {teacher.config.codebook_size} codes at f"
            f"{teacher.config.downsample_factor}, the tokenizer predicts {want.codebook_size} "
            f"codes at f{want.downsample_factor}"
        )
    return Loaded(
        teacher.requires_grad_(False), random, source if source == weights.TEACHER else _checkpoint_label(Path(source))
    )


def load_teacher(source: str, overrides: dict, allow_random: bool) -> tuple[models.MaskGITVQGAN, bool]:
    """(teacher, is_random_stand_in). A path loads that checkpoint; the registry name loads the released file
    from the weights cache, or builds a seeded random stand-in with `overrides` (its architecture) when allowed."""
    if source != weights.TEACHER:
        teacher = models.from_pretrained(source)
        if not isinstance(teacher, models.MaskGITVQGAN):
            raise SetupError(f"teacher {source} is a {teacher.kind}, not a MaskGIT-VQGAN")
        return teacher.eval(), False
    resolved = weights.resolve(weights.TEACHER, allow_random=allow_random)
    if resolved.path is not None:
        return models.from_pretrained(resolved.path, variant=weights.TEACHER).eval(), False
    return _standin(weights.TEACHER, vqgan_overrides(overrides)).eval(), True


def vqgan_overrides(overrides: dict) -> dict:
    """MaskGIT-VQGAN build overrides from a config (YAML gives lists where the config wants tuples)."""
    out = dict(overrides)
    if "channel_mult" in out:
        out["channel_mult"] = tuple(out["channel_mult"])
    return out


@dataclass(frozen=True)
class EvalModels:
    """What an evaluation reads: a tokenizer, the teacher that decodes its proxy codes (stage-1 form only) and,
    for generation, a generator on its tokens."""

    tokenizer: Loaded
    teacher: Loaded | None = None
    generator: Loaded | None = None

    @property
    def teacher_model(self) -> models.MaskGITVQGAN | None:
        return self.teacher.model if self.teacher else None

    @property
    def random(self) -> dict[str, bool]:
        """Which of them are stand-ins (or trained with one), by role: every number they give is tagged."""
        loaded = {"tokenizer": self.tokenizer, "teacher": self.teacher, "generator": self.generator}
        return {role: m.random for role, m in loaded.items() if m is not None}


def load_for_eval(
    tokenizer: str, *, teacher: str | None = None, generator: str | None = None, allow_random: bool = False
) -> EvalModels:
    tok = load_model(tokenizer, "tokenizer", allow_random)
    return EvalModels(
        tok,
        load_eval_teacher(tok.model, teacher, allow_random) if teacher else None,
        load_generator(generator, tok.model, allow_random) if generator else None,
    )
