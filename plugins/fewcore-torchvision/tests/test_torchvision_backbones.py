"""The torchvision backbones: discovered as a plugin, conformant, and loading weights from a file.

The weights are torchvision's random initialisation, saved to a file by each test: what matters
is that exactly the file's weights end up in the trunk, not what they were trained on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

import fewcore
from fewcore.testing import check_backbone
from fewcore_torchvision import VGG16, ResNet18, ResNet50, TorchvisionBackbone
from fewcore_torchvision.backbones import IMAGENET_MEAN, IMAGENET_STD

BACKBONES = [VGG16, ResNet18, ResNet50]
NAMES = [b.architecture for b in BACKBONES]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _saved_weights(tmp_path: Path, architecture: str, seed: int = 0) -> tuple[nn.Module, Path]:
    """A randomly initialised torchvision network and the file its state dict was saved to.

    For VGG-16 only the trunk is built and saved (under the classifier's key names): its
    classifier holds 124M parameters that the backbone does not use, and writing them would take
    most of this file's run time.
    """
    torch.manual_seed(seed)
    if architecture == "vgg16":
        model: nn.Module = nn.ModuleDict({"features": models.vgg.make_layers(models.vgg.cfgs["D"])})
    else:
        model = getattr(models, architecture)()
    path = tmp_path / f"{architecture}-random.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def _reference_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own modules up to the pooled features, on ImageNet-standardised inputs."""
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if isinstance(model, nn.ModuleDict):  # VGG-16's trunk
        return model["features"](x).mean(dim=(2, 3))
    model.fc = nn.Identity()  # the ResNet forward then ends at the global average pool
    return model(x)


def test_backbones_are_registered_through_the_entry_point() -> None:
    registry = fewcore.registry(reload=True)
    for name in NAMES:
        component = registry.get("backbone", f"torchvision-{name}")
        assert component.plugin.name == "torchvision"
        assert component.plugin.distribution == "fewcore-torchvision"


@pytest.mark.parametrize("backbone", BACKBONES, ids=NAMES)
def test_backbones_meet_the_backbone_contract(backbone: type[TorchvisionBackbone]) -> None:
    built = check_backbone(backbone, input_shape=(3, 32, 32), batch_size=2)
    assert built.embedding_size((3, 32, 32)) == (2048 if backbone is ResNet50 else 512)


@pytest.mark.parametrize("backbone", BACKBONES, ids=NAMES)
def test_random_weights_are_drawn_as_torchvision_draws_them(backbone: type[TorchvisionBackbone]) -> None:
    torch.manual_seed(0)
    trunk = backbone().trunk
    convolutions = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    widest = max(convolutions, key=lambda m: m.weight.numel())
    fan_out = widest.out_channels * widest.kernel_size[0] * widest.kernel_size[1]
    assert widest.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)  # He, fan-out
    for norm in (m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    assert all(not p.is_meta for p in trunk.parameters()) and all(not b.is_meta for b in trunk.buffers())


@pytest.mark.parametrize("architecture", ["vgg16", "resnet18"])
def test_weights_come_from_the_file(tmp_path: Path, architecture: str) -> None:
    model, path = _saved_weights(tmp_path, architecture)
    backbone = fewcore.create("backbone", f"torchvision-{architecture}", weights=str(path), item_shape=(3, 40, 36)).eval()
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), _reference_embedding(model, x))
    # other weights give other embeddings: the comparison above is not vacuous
    (tmp_path / "other").mkdir()
    _, other_file = _saved_weights(tmp_path / "other", architecture, seed=1)
    other = fewcore.create("backbone", f"torchvision-{architecture}", weights=str(other_file), item_shape=(3, 40, 36))
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), backbone(x))


def test_a_missing_or_wrong_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=r"weights file .*weights/resnet18.pth does not exist .*resnet18-f37072fd.pth"):
        ResNet18(weights=missing)
    _, resnet18_file = _saved_weights(tmp_path, "resnet18")
    with pytest.raises(ValueError, match=r"is not a state dict of torchvision's resnet50: missing \['layer1.0.bn3.bias'"):
        ResNet50(weights=resnet18_file)
    half = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in torch.load(resnet18_file).items()}, half)
    assert ResNet18(weights=half).trunk[0].weight.dtype == torch.float32  # stored in half, computed in float
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="holds a Tensor; expected a state dict"):
        ResNet18(weights=tmp_path / "tensor.pth")


def test_freeze_keeps_the_trunk_and_its_batch_norm_statistics(tmp_path: Path) -> None:
    _, path = _saved_weights(tmp_path, "resnet18")
    backbone = ResNet18(weights=path, freeze=True).train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.trunk.training  # batch norm uses the stored statistics, even in train mode
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = torch.rand(4, 3, 32, 32)
    train_out = backbone(x)
    torch.testing.assert_close(train_out, backbone.eval()(x))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="freeze=True needs weights=<file>"):
        ResNet18(freeze=True)


def test_grayscale_items_are_repeated_over_the_three_channels() -> None:
    torch.manual_seed(0)
    backbone = ResNet18(item_shape=(1, 32, 32)).eval()
    assert backbone.example_input_shape == (1, 32, 32)
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(gray), backbone(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"takes RGB or grayscale images \(3 or 1, H, W\); got item shape \(2, 32, 32\)"):
        ResNet18(item_shape=(2, 32, 32))
    with pytest.raises(ValueError, match="needs at least 32x32 pixels; got 28x28"):
        VGG16(item_shape=(3, 28, 28))


@pytest.mark.parametrize("backbone", BACKBONES, ids=NAMES)
def test_feature_shape_is_what_forward_features_returns(backbone: type[TorchvisionBackbone]) -> None:
    built = backbone().eval()
    for shape in ((3, 84, 84), (3, 37, 50)):
        with torch.no_grad():
            maps = built.forward_features(torch.rand(1, *shape))
        assert tuple(maps.shape[1:]) == built.feature_shape(shape)
