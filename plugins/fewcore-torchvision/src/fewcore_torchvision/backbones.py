"""torchvision's ImageNet classifiers as few-shot embedding networks.

**VGG-16** (Simonyan & Zisserman, ICLR 2015), the feature extractor of early few-shot and
transfer work; **ResNet-18** and **ResNet-50** (He et al., CVPR 2016). Each backbone is the
network's convolutional trunk — everything before its classifier — followed by global average
pooling:

    f(x) = mean_{h,w} trunk((x - μ) / σ)

with μ, σ the ImageNet channel statistics the torchvision weights were trained with. The
embedding size is the trunk's last channel count: 512 (VGG-16, ResNet-18) or 2048 (ResNet-50).
The trunk's five stride-2 stages reduce an 84×84 item to 2×2 (VGG-16) or 3×3 (ResNets) feature
maps, which :meth:`TorchvisionBackbone.forward_features` hands to learners that compare items
spatially.

Weights come only from a local file (never from the network): torchvision's own state-dict file
for the architecture, e.g. ``resnet18-f37072fd.pth``, placed wherever the config says (a file
holding only the trunk's tensors, under the classifier's names, does as well; the classifier's
are not used). Without a file the trunk starts from random weights drawn as torchvision draws
them (He initialisation); the classifier is never built in memory either way. ``freeze`` keeps the trunk
fixed: no gradients, and its batch-norm layers always use their stored statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn
from torchvision import models

import fewcore
from fewcore.paths import resolve_data_path

#: ImageNet channel means and standard deviations (of the images torchvision's weights saw)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Architecture:
    """What differs between the wrapped networks.

    Attributes:
        build: torchvision's constructor (called without weights).
        trunk: the classifier's modules before pooling and classification, in order.
        channels: channels of the trunk's output, the embedding size.
        halve: the side after one of the trunk's five stride-2 stages, given the side before.
        min_side: the smallest image side the trunk maps to at least one feature position.
        weights_file: the file name torchvision gives its ImageNet weights for this network.
    """

    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Sequential]
    channels: int
    halve: Callable[[int], int]
    min_side: int
    weights_file: str

    def feature_side(self, side: int) -> int:
        """The trunk's output side for an input side."""
        for _ in range(5):
            side = self.halve(side)
        return side


def _floor_half(side: int) -> int:
    """A 2×2 max-pool of stride 2 (VGG) drops an odd last row."""
    return side // 2


def _ceil_half(side: int) -> int:
    """A padded stride-2 convolution or 3×3 pool (ResNet) keeps an odd last row."""
    return (side + 1) // 2


def _resnet_trunk(model: nn.Module) -> nn.Sequential:
    assert isinstance(model, models.ResNet)
    return nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
    )


def _vgg_trunk(model: nn.Module) -> nn.Sequential:
    assert isinstance(model, models.VGG)
    return model.features


#: architecture name → how to build and cut it
ARCHITECTURES: dict[str, _Architecture] = {
    "vgg16": _Architecture(models.vgg16, _vgg_trunk, 512, _floor_half, 32, "vgg16-397923af.pth"),
    "resnet18": _Architecture(models.resnet18, _resnet_trunk, 512, _ceil_half, 1, "resnet18-f37072fd.pth"),
    "resnet50": _Architecture(models.resnet50, _resnet_trunk, 2048, _ceil_half, 1, "resnet50-0676ba61.pth"),
}


def _read_state_dict(weights: str | os.PathLike[str], name: str, architecture: _Architecture) -> tuple[Path, dict[str, Tensor]]:
    """The file ``weights`` names (found like a data path) and its state dict, or an error that
    names the file and what was expected."""
    expected = (
        f"Expected torchvision's ImageNet state dict for this network (torchvision names it "
        f"{architecture.weights_file}) there; fewcore never downloads weights. Copy the file there, "
        "or leave weights out to start from random weights."
    )
    try:
        path = resolve_data_path(weights)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{name}: weights file {weights} does not exist ({exc}). {expected}") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{name}: weights file {path} is not a file. {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or a pickled model, not a state dict
        raise ValueError(f"{name}: cannot read {path} as a state dict of tensors ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{name}: {path} holds a {type(state).__name__}; expected a state dict (name → tensor)")
    return path, state


def _trunk_on_meta(architecture: _Architecture) -> tuple[nn.Module, nn.Sequential]:
    """The whole network and its trunk, built on the meta device: no memory or time goes into
    weights that are replaced or dropped (VGG-16's classifier holds 124M of its 138M parameters)."""
    with torch.device("meta"):
        model = architecture.build()
    return model, architecture.trunk(model)


def _random_trunk(architecture: _Architecture) -> nn.Sequential:
    """The trunk with fresh weights, initialised as torchvision initialises these networks: He
    normal (fan-out, ReLU gain) convolutions with zero biases, batch norm at the identity."""
    _, trunk = _trunk_on_meta(architecture)
    trunk.to_empty(device="cpu")
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # weight 1, bias 0, running mean 0 and variance 1
    return trunk


def _trunk_with_weights(weights: str | os.PathLike[str], name: str, architecture: _Architecture) -> nn.Sequential:
    """The trunk, its tensors taken from the state dict in the file ``weights`` (which may hold
    the classifier's tensors too, or only the trunk's)."""
    path, state = _read_state_dict(weights, name, architecture)
    model, trunk = _trunk_on_meta(architecture)
    in_trunk = {id(tensor) for tensor in trunk.state_dict(keep_vars=True).values()}
    every = model.state_dict(keep_vars=True)
    needed = {key for key, tensor in every.items() if id(tensor) in in_trunk}
    missing, unexpected = sorted(needed - state.keys()), sorted(state.keys() - every.keys())
    if missing or unexpected:
        raise ValueError(
            f"{name}: {path} is not a state dict of torchvision's {name.removeprefix('torchvision-')}: "
            f"missing {missing[:3]} ({len(missing)} in all), unexpected {unexpected[:3]} ({len(unexpected)} in all)"
        )
    # assign=True keeps the file's tensors, so a half-precision file would make a half-precision trunk
    trunk_state = {key: state[key].float() if state[key].is_floating_point() else state[key] for key in needed}
    try:
        model.load_state_dict(trunk_state, strict=False, assign=True)
    except RuntimeError as exc:  # tensors of the wrong shapes
        raise ValueError(f"{name}: the tensors of {path} do not fit torchvision's network: {exc}") from exc
    return trunk


class TorchvisionBackbone(fewcore.Backbone):
    """A torchvision classifier's trunk with global average pooling; see the module docstring.

    Subclasses name the architecture (:class:`VGG16`, :class:`ResNet18`, :class:`ResNet50`).

    Args:
        weights: path of torchvision's state-dict file for the architecture, relative paths
            looked up like data paths (:func:`fewcore.paths.resolve_data_path`: under the data
            folder, then beside the config file); ``None`` for random initial weights.
        freeze: keep the trunk's weights and batch-norm statistics fixed (needs ``weights``).
        normalize: standardise inputs in [0, 1] with the ImageNet mean and deviation, as the
            torchvision weights expect.
        item_shape: ``(C, H, W)`` of one item (the engine passes the dataset's); C is 3, or 1 for
            grayscale items, which are repeated over the three input channels.

    Raises:
        FileNotFoundError: ``weights`` names a file that does not exist.
        ValueError: ``weights`` is not the architecture's state dict, ``freeze`` is set without
            weights, or the items are not 1- or 3-channel images of the minimum size.
    """

    architecture: ClassVar[str]
    mean: Tensor  # [1, 3, 1, 1] buffers of IMAGENET_MEAN and IMAGENET_STD
    std: Tensor

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        freeze: bool = False,
        normalize: bool = True,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.name = f"torchvision-{self.architecture}"
        self._spec = ARCHITECTURES[self.architecture]
        if freeze and weights is None:
            raise ValueError(f"{self.name}: freeze=True needs weights=<file>; a frozen random trunk learns nothing")
        self.in_channels = 3 if item_shape is None else self._check_shape(tuple(item_shape))[0]
        if weights is None:
            self.trunk = _random_trunk(self._spec)
        else:
            self.trunk = _trunk_with_weights(weights, self.name, self._spec)
        self.freeze = freeze
        self.normalize = normalize
        if freeze:
            self.trunk.requires_grad_(False)
            self.trunk.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """A 32×32 image with the backbone's input channels."""
        return (self.in_channels, 32, 32)

    def _check_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"{self.name} takes RGB or grayscale images (3 or 1, H, W); got item shape {shape}")
        if min(shape[1:]) < self._spec.min_side:
            raise ValueError(
                f"{self.name} halves images five times, so it needs at least {self._spec.min_side}x"
                f"{self._spec.min_side} pixels; got {shape[1]}x{shape[2]}"
            )
        return shape[0], shape[1], shape[2]

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        """The trunk's output channels (512, or 2048 for ResNet-50), for any accepted image."""
        self._check_shape(tuple(input_shape))
        return self._spec.channels

    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(channels, H', W')`` of the trunk's feature maps for items of ``input_shape``."""
        _, height, width = self._check_shape(tuple(input_shape))
        return (self._spec.channels, self._spec.feature_side(height), self._spec.feature_side(width))

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        """Set training mode; a frozen trunk stays in eval mode, so batch norm keeps its statistics."""
        super().train(mode)
        if self.freeze:
            self.trunk.eval()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``[batch, *feature_shape(x.shape[1:])]`` of images ``[batch, C, H, W]`` in [0, 1]."""
        if x.dim() != 4:
            raise ValueError(f"{self.name} expects a batch of images [batch, C, H, W]; got shape {tuple(x.shape)}")
        self._check_shape(tuple(x.shape[1:]))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Embed images ``[batch, C, H, W]`` in [0, 1] → ``[batch, embedding_size]``."""
        return self.forward_features(x).mean(dim=(2, 3))


class VGG16(TorchvisionBackbone):
    """VGG-16's 13 convolutional layers and 5 max-pools; 512-d embeddings. Inputs at least 32×32."""

    architecture = "vgg16"


class ResNet18(TorchvisionBackbone):
    """ResNet-18's stem and four stages of basic blocks; 512-d embeddings."""

    architecture = "resnet18"


class ResNet50(TorchvisionBackbone):
    """ResNet-50's stem and four stages of bottleneck blocks; 2048-d embeddings."""

    architecture = "resnet50"
