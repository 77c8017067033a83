"""The switches of an inference path (InferenceOptions) and the named modes built from them.

Switches, each independent:
- batch_guidance: the conditional and unconditional passes of classifier-free guidance as one batched forward;
- inference_mode: torch.inference_mode instead of torch.no_grad (no version counters or view tracking);
- precision: bf16 / fp16 autocast for the transformers and convolutions (the VQ lookup stays fp32, and the
  guidance mix and the sampler run on fp32 logits);
- cast_weights: with a low precision, keep low-precision copies of the generator, the ViT encoder/decoder and
  the pixel decoder instead of casting fp32 weights at every call (autocast caches casts only for weights that
  require grad, and its per-op casts of activations between fp32 norms and bf16 matmuls cost memory traffic);
- channels_last: NHWC convolutions in the MaskGIT-VQGAN pixel decoder (and the teacher's decoder);
- compile: torch.compile (with freezing) of the generator forward, the ViT encoder/decoder and the pixel decoder;
- cuda_graphs: the generator forward replayed from CUDA graphs (fixed shapes in the sampling loop; CUDA only).
  With `compile` too, inductor's own CUDA graphs are used (its "reduce-overhead" setting) instead of ours;
- tf32: TF32 matmuls and convolutions on CUDA (off in the fp32 paths, so they stay exact).

Modes: `naive` is the reference procedure written plainly (separate conditional and unconditional forwards,
torch.no_grad, fp32, NCHW, eager); `parity` is the exact fp32 path (batched guidance and inference_mode change
no value: tokens equal the reference sampler's); `fast` is bf16 with bf16 weight copies + channels-last (+ CUDA
graphs and TF32 on CUDA); `compiled` is `fast` + torch.compile. `fast` is never slower than `parity`: on a CPU whose
bf16 matmuls run below half the fp32 rate (an AVX2-only CPU runs them far slower than fp32), measured by the
one-thread matmul probe of bench.core.dist, `fast` is parity's own fp32 path (`compiled` keeps its torch.compile on
that fp32 path), and `fallback_note` says so (bench.speed prints it beside the row). `auto` is the fastest path that
passes the quality guard (bench/speed/guard.py); without models (`mode_options`) it is the capability answer alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bench.core.dist import autocast_rate_ratio, fast_autocast

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceOptions:
    precision: str = "fp32"  # "fp32" (no autocast), "bf16" or "fp16" autocast
    batch_guidance: bool = True
    inference_mode: bool = True
    cast_weights: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    tf32: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {sorted(PRECISIONS)}")

    @property
    def exact(self) -> bool:
        """Whether this path computes the reference's fp32 values (up to summation order)."""
        return self.precision == "fp32" and not self.tf32

    def describe(self) -> str:
        on = [
            name
            for name in (
                "batch_guidance",
                "inference_mode",
                "cast_weights",
                "channels_last",
                "compile",
                "cuda_graphs",
                "tf32",
            )
            if getattr(self, name)
        ]
        return "+".join([self.precision, *on])


def fast_options(device: torch.device | str = "cpu") -> InferenceOptions:
    """The `fast` switches as such (bf16, bf16 weight copies, channels-last; CUDA graphs and TF32 on CUDA), whether
    or not this device runs bf16 quickly (mode_options("fast") checks that)."""
    cuda = torch.device(device).type == "cuda"
    return InferenceOptions(precision="bf16", cast_weights=True, channels_last=True, cuda_graphs=cuda, tf32=cuda)


def fallback_note(mode: str, device: torch.device | str = "cpu") -> str | None:
    """Why `mode` runs without its low precision on `device` (a CPU whose bf16 matmuls are slow), else None."""
    device = torch.device(device)
    if mode not in ("fast", "compiled", "auto") or fast_autocast("bf16", device):
        return None
    ratio = autocast_rate_ratio("bf16", device)
    runs = {"fast": "parity's fp32 path", "compiled": "torch.compile of parity's fp32 path", "auto": "parity"}[mode]
    return (
        f"bf16 matmuls run at {ratio:.2g}x the fp32 rate on this CPU "
        f"({torch.backends.cpu.get_cpu_capability()}): {mode} runs {runs} here"
    )


def mode_options(mode: str, device: torch.device | str = "cpu") -> InferenceOptions:
    """The named modes (module docstring). `fast` and `compiled` drop bf16 where its matmuls are slow (they run
    parity's fp32 arithmetic and layout there); `auto` without models is that capability answer alone (`fast` where
    bf16 is fast, else `parity`): InferencePipeline and choose_path add the quality guard."""
    device = torch.device(device)
    fast = fast_options(device) if fast_autocast("bf16", device) else InferenceOptions()
    modes = {
        "naive": InferenceOptions(batch_guidance=False, inference_mode=False),
        "parity": InferenceOptions(),
        "fast": fast,
        "compiled": dataclasses.replace(fast, compile=True),
    }
    if mode == "auto":
        return fast
    if mode not in modes:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {', '.join(MODES)}")
    return modes[mode]


MODES = ("naive", "parity", "fast", "compiled", "auto")


def resolve_options(mode: str | InferenceOptions, device: torch.device | str = "cpu") -> InferenceOptions:
    return mode if isinstance(mode, InferenceOptions) else mode_options(mode, device)
