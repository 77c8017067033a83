"""LPIPS and ConvNeXt logits: stand-ins, loading registry files, frozen but differentiable."""

import pytest
import torch

from bench import weights
from bench.perceptual import LPIPS, ConvNeXtLogits, _vgg16_features, convnext_perceptual_loss


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path))
    return tmp_path


def test_lpips_standin_distance_and_gradients(cache):
    with pytest.raises(weights.MissingWeightsError, match="vgg16-397923af.pth"):
        LPIPS()
    lp = LPIPS(allow_random=True)
    assert lp.random and not lp.training
    assert all(not p.requires_grad for p in lp.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = torch.rand(2, 3, 32, 32, generator=g).requires_grad_()
    assert torch.equal(lp(x, x), torch.zeros(2))
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    lp.train()
    assert not lp.training  # stays frozen inside a module that is put in training mode
    assert torch.equal(LPIPS(allow_random=True)(x, y.detach()), d.detach())  # the stand-in is seeded


def test_lpips_loads_registry_files(cache):
    vgg = {f"features.{k}": v for k, v in _vgg16_features().state_dict().items()}
    torch.save(vgg, weights.path_of(weights.VGG16))
    lins = {f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), 0.5) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, weights.path_of(weights.LPIPS_VGG))
    lp = LPIPS()
    assert not lp.random
    assert torch.equal(lp.lins[3].weight, lins["lin3.model.1.weight"])
    assert torch.equal(lp.slices[1][1].weight, vgg["features.5.weight"])  # slice 2 starts at features[4] (pool)


def test_convnext_logits_and_loss(cache):
    with pytest.raises(weights.MissingWeightsError, match="convnext_small-0c510722.pth"):
        ConvNeXtLogits()
    net = ConvNeXtLogits(allow_random=True, resolution=64)  # 224 in use; 64 keeps the CPU test short
    assert net.random and all(not p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 32, 32)
    y = torch.rand(1, 3, 32, 32, requires_grad=True)  # resized to 64 inside (bilinear, antialias)
    assert convnext_perceptual_loss(net, x, x).item() == 0
    loss = net.perceptual_loss(y, x)
    assert loss.item() > 0
    loss.backward()
    assert y.grad.abs().sum() > 0
    assert net(x).shape == (1, 1000)
