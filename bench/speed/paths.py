"""Inference paths for TiTok tokenizers and MaskGIT generators: InferencePipeline encodes, decodes and generates on
one path (the exact fp32 `parity` path or a fast one: bench/speed/options.py), compare_with_parity measures a path
against parity, and choose_path picks `auto`'s path with the quality guard (bench/speed/guard.py).

    from bench.speed.paths import InferencePipeline, compare_with_parity
    from bench.speed.options import resolve_options
    pipe = InferencePipeline(tokenizer, generator, options=resolve_options("fast", "cpu"))
    ids, images = pipe.generate(labels, rng=torch.Generator().manual_seed(0))
    compare_with_parity(tokenizer, generator, options="fast")   # token agreement, image PSNR

The pipeline's `choice` records which path ran and why. The pipeline never modifies the models it is given: paths
that change weights or their layout work on copies.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from models.generators import MaskGITGenerator
from models.maskgit_vqgan import MaskGITVQGAN
from models.sampling import Generators, SamplerSettings
from models.titok import TiTok

from .guard import GUARD, QualityGuard, image_psnr
from .options import PRECISIONS, InferenceOptions, fallback_note, mode_options, resolve_options


# ---- CUDA graphs ---------------------------------------------------------------------------------------------------
class CUDAGraphForward:
    """A generator forward `fn(ids, labels, drop)` replayed from CUDA graphs, one per input signature (shapes and
    the drop flag when it is a Python bool). Inputs are copied into static buffers; the output is cloned, so
    callers may keep it."""

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict = {}

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor | bool = False) -> torch.Tensor:
        key = (tuple(ids.shape), tuple(labels.shape), drop if isinstance(drop, bool) else tuple(drop.shape))
        if key not in self.graphs:
            self.graphs[key] = self._capture(ids, labels, drop)
        graph, static, out = self.graphs[key]
        for buffer, value in zip(static, (ids, labels, drop)):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        graph.replay()
        return out.clone()

    def _capture(self, ids, labels, drop):
        static = [ids.clone(), labels.clone(), drop.clone() if isinstance(drop, torch.Tensor) else drop]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up allocations and kernel selection outside the capture
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static)
        return graph, static, out


# ---- the pipeline --------------------------------------------------------------------------------------------------
def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _prepared(module: nn.Module | None, dtype: torch.dtype | None, channels_last: bool) -> nn.Module | None:
    """The module itself, or a copy in `dtype` and/or with NHWC convolution weights."""
    if module is None or (dtype is None and not channels_last):
        return module
    module = copy.deepcopy(module)
    if dtype is not None:
        module.to(dtype)
    return module.to(memory_format=torch.channels_last) if channels_last else module


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for CUDA matmuls and convolutions, restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class InferencePipeline:
    """Encode, decode and generate with one set of `InferenceOptions`.

    `teacher` (a MaskGIT-VQGAN) decodes for a two-stage tokenizer in stage-1 form (no pixel decoder): tokens ->
    argmax proxy codes -> teacher decoder, as `decode_proxy_codes` + `teacher.decode` do.
    """

    def __init__(
        self,
        tokenizer: TiTok,
        generator: MaskGITGenerator | None = None,
        *,
        options: InferenceOptions | str = "parity",
        teacher: MaskGITVQGAN | None = None,
        guard: QualityGuard | None = None,
        probe_settings: SamplerSettings | None = None,
    ):
        self.tokenizer, self.generator, self.teacher = tokenizer.eval(), generator, teacher
        self.device = _device_of(tokenizer)
        if options == "auto":  # the guarded choice (its probe runs here): `choice` says which path and why
            self.choice = choose_path(
                tokenizer, generator, teacher=teacher, guard=guard or GUARD, sampler_settings=probe_settings
            )
        else:
            mode = options if isinstance(options, str) else "custom"
            self.choice = PathChoice(
                mode, resolve_options(options, self.device), fallback_note(mode, self.device) or ""
            )
        self.options = o = self.choice.options
        if o.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device; the models are on {self.device}")
        if generator is not None:
            generator.eval()
        if teacher is not None:
            teacher.eval()
        cast = PRECISIONS[o.precision] if o.cast_weights else None
        self._encoder = self._compiled(_prepared(tokenizer.encoder, cast, False))
        self._decoder = self._compiled(_prepared(tokenizer.decoder, cast, False))
        self._pixel_decoder = self._compiled(
            _prepared(getattr(tokenizer, "pixel_decoder", None), cast, o.channels_last)
        )
        self._teacher_decoder = self._compiled(
            _prepared(teacher.decoder if teacher is not None else None, cast, o.channels_last)
        )
        self._forward = self._generator_forward(_prepared(generator, cast, False)) if generator is not None else None

    # -- building blocks --------------------------------------------------------------------------------------
    def _compiled(self, module: nn.Module | None, cuda_graphs: bool = False):
        if module is None or not self.options.compile:
            return module
        # freezing: weights become constants (CPU: prepacked oneDNN weights); the pipeline never trains them
        options = {"freezing": True, "triton.cudagraphs": cuda_graphs}
        return torch.compile(module, dynamic=False, options=options)

    def _autocast(self, cache: bool = True):
        dtype = PRECISIONS[self.options.precision]
        if dtype is None:
            return nullcontext()
        # the autocast weight cache must be off inside CUDA-graph capture
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=cache)

    @contextmanager
    def context(self) -> Iterator[None]:
        """Gradient mode and numerics of this path (autocast is applied per component)."""
        grad = torch.inference_mode() if self.options.inference_mode else torch.no_grad()
        tf32 = _tf32(self.options.tf32) if self.device.type == "cuda" else nullcontext()
        with grad, tf32:
            yield

    def _generator_forward(self, generator: MaskGITGenerator) -> Callable[..., torch.Tensor] | None:
        """The forward the sampler calls; None (the module itself) on the exact eager path."""
        o = self.options
        if o.precision == "fp32" and not o.compile and not o.cuda_graphs:
            return None
        graphs = o.cuda_graphs and not o.compile
        module = self._compiled(generator, cuda_graphs=o.cuda_graphs)

        def forward(ids, labels, drop=False):
            with self._autocast(cache=not graphs):
                # fp32 logits for the guidance mix and the sampler, in a fresh tensor: CUDA-graph outputs are reused
                return module(ids, labels, drop).to(torch.float32, copy=True)

        return CUDAGraphForward(forward) if graphs else forward

    def _nhwc(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    # -- public API -------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The path that runs, e.g. "parity (fp32+batch_guidance+inference_mode)"."""
        return self.choice.describe()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> VQ ids [B, K] or VAE posterior means [B, K, C] (TiTok.encode)."""
        tok = self.tokenizer
        with self.context():
            with self._autocast():
                z = self._encoder(images, tok.latent_tokens)
            q = tok.quantize_latents(z, sample=False)  # fp32 whatever the autocast
            return q.indices if tok.is_vq else q.z_quantized.squeeze(2).transpose(1, 2)

    def decode(self, tokens: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """tokens -> images [B, 3, H, W] in [0, 1] (TiTok.decode, or decode_proxy_codes + the teacher)."""
        tok = self.tokenizer
        with self.context(), self._autocast():
            out = self._decoder(tok.tokens_to_latents(tokens), text)
            if tok.config.two_stage:
                if self._pixel_decoder is not None:
                    out = self._pixel_decoder(self._nhwc(tok.pixel_quantize.soft_lookup(out.softmax(dim=1))))
                elif self._teacher_decoder is not None:
                    codes = out.argmax(dim=1).flatten(1)
                    out = self._teacher_decoder(self._nhwc(self.teacher.quantize.lookup(codes)))
                else:
                    raise ValueError(
                        "this two-stage TiTok is in stage-1 form (no pixel decoder): pass the "
                        "MaskGIT-VQGAN teacher to decode its proxy codes"
                    )
            return out.float().clamp(0.0, 1.0).contiguous()

    def sample(
        self, labels: torch.Tensor, settings: SamplerSettings | None = None, rng: Generators = None
    ) -> torch.Tensor:
        """Token ids [B, K] for class labels [B] (MaskGITGenerator.generate with this path's forward); `rng`: one
        torch.Generator for the batch or one per row."""
        if self.generator is None:
            raise ValueError("this pipeline has no generator")
        settings = settings or self.generator.config.sampler
        with self.context():
            return self.generator.generate(
                labels,
                generator=rng,
                batch_guidance=self.options.batch_guidance,
                forward=self._forward,
                **dataclasses.asdict(settings),
            )

    def generate(
        self, labels: torch.Tensor, settings: SamplerSettings | None = None, rng: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class labels -> (token ids, images): sampling with de-tokenisation."""
        ids = self.sample(labels, settings, rng)
        return ids, self.decode(ids)


# ---- against parity ------------------------------------------------------------------------------------------------
def compare_with_parity(
    tokenizer: TiTok,
    generator: MaskGITGenerator | None = None,
    *,
    options: InferenceOptions | str = "fast",
    batch_size: int = 4,
    seed: int = 0,
    sampler_settings: SamplerSettings | None = None,
    teacher: MaskGITVQGAN | None = None,
    images: torch.Tensor | None = None,
) -> dict[str, float]:
    """A path against the exact fp32 path on a fixed seed.

    Returns token_agreement (share of equal sampled ids, generator given), image_psnr_db (the two paths'
    generated images), decode_psnr_db (both paths decoding the same tokens), and encode_agreement (share of
    equal VQ ids; for VAE latents encode_rel_error, the relative L2 error) encoding the same images: `images`, else
    the parity path's generated or decoded images.
    """
    device = _device_of(tokenizer)
    exact = InferencePipeline(tokenizer, generator, options="parity", teacher=teacher)
    other = InferencePipeline(tokenizer, generator, options=options, teacher=teacher)
    out: dict[str, float] = {}
    if generator is not None:
        labels = torch.arange(batch_size, device=device) % generator.config.num_classes
        ids_ref, img_ref = exact.generate(labels, sampler_settings, torch.Generator(device).manual_seed(seed))
        ids, img = other.generate(labels, sampler_settings, torch.Generator(device).manual_seed(seed))
        out["token_agreement"] = float((ids == ids_ref).float().mean())
        out["image_psnr_db"] = image_psnr(img, img_ref)
    else:
        c = tokenizer.config
        g = torch.Generator(device).manual_seed(seed)
        if images is None:
            images = torch.rand(batch_size, 3, c.image_size, c.image_size, generator=g, device=device)
        ids_ref = exact.encode(images)
        img_ref = exact.decode(ids_ref)
    out["decode_psnr_db"] = image_psnr(other.decode(ids_ref), img_ref)
    source = images if images is not None else img_ref
    enc_ref, enc = exact.encode(source), other.encode(source)
    if tokenizer.is_vq:
        out["encode_agreement"] = float((enc == enc_ref).float().mean())
    else:
        out["encode_rel_error"] = float((enc - enc_ref).norm() / enc_ref.norm())
    return out


@dataclass(frozen=True)
class PathChoice:
    """The path a pipeline runs: its mode (for `auto`, the mode it took), options, why, and the probe's numbers."""

    mode: str
    options: InferenceOptions
    reason: str = ""
    quality: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.mode} ({self.options.describe()})"


def choose_path(
    tokenizer: TiTok,
    generator: MaskGITGenerator | None = None,
    *,
    teacher: MaskGITVQGAN | None = None,
    guard: QualityGuard = GUARD,
    sampler_settings: SamplerSettings | None = None,
) -> PathChoice:
    """`auto`: `fast` where the device runs bf16 quickly and `fast` passes `guard` against parity on a probe batch
    (guard.batch_size samples or images, guard.seed, `sampler_settings` or the generator's own), else `parity`."""
    device = _device_of(tokenizer)
    parity, fast = InferenceOptions(), mode_options("fast", device)
    note = fallback_note("auto", device)
    if note:
        return PathChoice("parity", parity, note)
    if guard.exact and not fast.exact:
        return PathChoice(
            "parity",
            parity,
            f"the guard admits exact fp32 paths only (tokens equal the reference sampler's); fast is {fast.precision}",
        )
    quality = compare_with_parity(
        tokenizer,
        generator,
        options=fast,
        batch_size=guard.batch_size,
        seed=guard.seed,
        sampler_settings=sampler_settings,
        teacher=teacher,
    )
    failed = guard.failures(quality)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in quality.items())
    if failed:
        return PathChoice("parity", parity, "fast failed the quality guard: " + "; ".join(failed), quality)
    return PathChoice("fast", fast, f"fast passed the quality guard ({shown})", quality)
