"""The same metrics through torch-fidelity's and clean-fid's own code, on our Inception features.

torch-fidelity (primary backend)
- low level, on features we extracted: `fid_statistics_to_metric` on {mu, sigma} dicts (it has no argument
  for precomputed statistics, but this function takes them), `isc_features_to_metric` (shuffle off: ADM),
  `prc_features_to_metric` (its convention: features_1 = generated, features_2 = real);
- end to end: `calculate_metrics` on uint8 image tensors with the registry's (or the stand-in) weights file,
  `cuda` from the device, no on-disk feature cache, samples not shuffled.
torch-fidelity's FID takes tr sqrt(S1 S2) from the eigenvalues of S1 S2, not scipy's sqrtm.

clean-fid (second FID backend)
- low level: `fid_from_feats` / `frechet_distance` (scipy sqrtm, disp=False: needs SciPy < 1.18);
- end to end: `compute_fid(dir1, dir2, mode="legacy_tensorflow", custom_feat_extractor=...)`: that mode does no
  resizing outside the network, so the callable gets the images at their own size as float 0..255 and runs
  our InceptionFeatures on them (TF-style resize inside). A custom extractor also keeps clean-fid from
  downloading its TorchScript to /tmp/inception-2015-12-05.pt.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.eval.inception import InceptionFeatures, as_uint8_nchw


def _np64(a) -> np.ndarray:
    return (a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)).astype(np.float64)


# ---- torch-fidelity --------------------------------------------------------------------------------------------
def torch_fidelity_fid(mu1, sigma1, mu2, sigma2) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    s1 = {"mu": _np64(mu1), "sigma": _np64(sigma1)}
    s2 = {"mu": _np64(mu2), "sigma": _np64(sigma2)}
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def torch_fidelity_fid_from_features(features1, features2) -> float:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    s1 = fid_features_to_statistics(torch.as_tensor(_np64(features1)))
    s2 = fid_features_to_statistics(torch.as_tensor(_np64(features2)))
    return torch_fidelity_fid(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"])


def torch_fidelity_isc(logits, splits: int = 10) -> tuple[float, float]:
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(torch.as_tensor(_np64(logits)), splits=splits, shuffle=False)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def torch_fidelity_prc(real_pool, fake_pool, k: int = 3) -> tuple[float, float]:
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(
        torch.as_tensor(_np64(fake_pool)),
        torch.as_tensor(_np64(real_pool)),
        prc_neighborhood=k,
        save_cpu_ram=False,
        verbose=False,
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


class UInt8Images(torch.utils.data.Dataset):
    """uint8 images [N,3,H,W] (or [N,H,W,3]) as the Dataset torch-fidelity's inputs expect."""

    def __init__(self, images):
        self.images = as_uint8_nchw(images).cpu()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def torch_fidelity_metrics(
    fake_images,
    real_images,
    extractor: InceptionFeatures,
    fid: bool = True,
    isc: bool = True,
    prc: bool = False,
    isc_splits: int = 10,
    batch_size: int = 64,
) -> dict:
    """torch_fidelity.calculate_metrics end to end (input1 = fakes), with `extractor`'s weights file and device.
    Numbers are stand-in numbers when extractor.random is True."""
    import torch_fidelity

    return torch_fidelity.calculate_metrics(
        input1=UInt8Images(fake_images),
        input2=UInt8Images(real_images),
        cuda=extractor.device.type == "cuda",  # its default is True, which fails on a CPU machine
        feature_extractor_weights_path=str(extractor.weights_path),
        fid=fid,
        isc=isc,
        prc=prc,
        isc_splits=isc_splits,
        samples_shuffle=False,
        batch_size=batch_size,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )  # in-memory images: no loader workers (it would fork 4); P/R in its batched variant


# ---- clean-fid -------------------------------------------------------------------------------------------------
def cleanfid_fid(mu1, sigma1, mu2, sigma2) -> float:
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(_np64(mu1), _np64(sigma1), _np64(mu2), _np64(sigma2)))


def cleanfid_fid_from_features(features1, features2) -> float:
    from cleanfid.fid import fid_from_feats

    return float(fid_from_feats(_np64(features1), _np64(features2)))


def cleanfid_feature_fn(extractor: InceptionFeatures):
    """A clean-fid custom_feat_extractor: float 0..255 [B,3,H,W] -> pool features [B,2048]."""

    def fn(batch: torch.Tensor) -> torch.Tensor:
        return extractor(batch.round().clamp(0, 255).to(torch.uint8)).pool

    return fn


def cleanfid_compute_fid(dir1, dir2, extractor: InceptionFeatures, batch_size: int = 32) -> float:
    """clean-fid's folder-vs-folder FID end to end (images of one size per folder) with our Inception."""
    from cleanfid import fid as cfid

    return float(
        cfid.compute_fid(
            str(dir1),
            str(dir2),
            mode="legacy_tensorflow",
            custom_feat_extractor=cleanfid_feature_fn(extractor),
            device=extractor.device,
            batch_size=batch_size,
            num_workers=0,
            verbose=False,
        )
    )
