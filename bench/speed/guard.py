"""The quality guard: the bounds a fast inference path must reach against the exact fp32 parity path for `auto` to
take it (QualityGuard), and the image PSNR it is measured in.

`auto` (the default of the sweep's speed stage, of `python -m bench.speed` and of evaluation sampling) is the fastest
path that passes the guard (bench.speed.paths.choose_path): `parity` where the device's bf16 is slow (no probe:
`fast` is parity's path there), else `fast` if, on a short probe batch (4 samples, seed 0, the run's sampler
settings) against parity (bench.speed.paths.compare_with_parity), its sampled tokens agree >= 90%, its generated
images are >= 30 dB PSNR from parity's, decoding the same tokens gives >= 30 dB, and encoding the same images gives
>= 85% equal VQ ids (VAE: relative error <= 0.02): the bounds the toy models clear with margin
(tests/speed/test_paths.py), else `parity`. A guard with `exact=True` (EXACT_GUARD: evaluation sampling, whose
samples must equal the reference sampler's for gFID parity) passes exact fp32 paths only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.eval.metrics import psnr


def image_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [0, 1] taken as one signal (inf when equal)."""
    return float(psnr(a.reshape(1, -1).float(), b.reshape(1, -1).float())[0])


@dataclass(frozen=True)
class QualityGuard:
    """What a path must reach against parity on a probe batch (compare_with_parity) for `auto` to take it. The
    defaults are the bounds the toy models with random weights clear with margin (tests/speed/test_paths.py); `exact`
    admits exact fp32 paths only (tokens equal the reference sampler's: evaluation sampling)."""

    min_token_agreement: float = 0.9
    min_image_psnr_db: float = 30.0
    min_decode_psnr_db: float = 30.0
    min_encode_agreement: float = 0.85
    max_encode_rel_error: float = 0.02
    exact: bool = False
    batch_size: int = 4
    seed: int = 0

    def failures(self, quality: dict[str, float]) -> list[str]:
        """The checks `quality` (compare_with_parity's dict) fails, in words; [] when it passes."""
        checks = [
            ("token_agreement", ">=", self.min_token_agreement),
            ("image_psnr_db", ">=", self.min_image_psnr_db),
            ("decode_psnr_db", ">=", self.min_decode_psnr_db),
            ("encode_agreement", ">=", self.min_encode_agreement),
            ("encode_rel_error", "<=", self.max_encode_rel_error),
        ]
        out = []
        for key, op, bound in checks:
            if key in quality and not (quality[key] >= bound if op == ">=" else quality[key] <= bound):
                out.append(f"{key} {quality[key]:.4g} (needs {op} {bound:g})")
        return out


GUARD = QualityGuard()
EXACT_GUARD = QualityGuard(exact=True)
