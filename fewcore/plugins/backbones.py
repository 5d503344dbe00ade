"""Built-in backbones: Conv4, ResNet-12 and an MLP, registered through the ``fewcore`` entry points.

Every backbone maps ``[batch, *input_shape]`` to ``[batch, E]`` embeddings and reports ``E``
through ``embedding_size(input_shape)``; ``example_input_shape`` is an input it accepts as built
(the registry-driven conformance tests feed it). Each takes the dataset's ``item_shape`` (the
engine passes it) and sizes its input layer from it. Conv4 and ResNet-12 also hand out their
last stage's feature maps (``forward_features``, ``[batch, C, H', W']``).

**Conv4** (Vinyals et al. 2016, "Matching Networks for One Shot Learning"; Snell et al. 2017,
"Prototypical Networks for Few-shot Learning"): four blocks

    h_{l+1} = MaxPool_{2x2}(ReLU(BN(Conv_{3x3}(h_l))))

with 64 channels each, flattened. Padding 1 keeps the spatial size through each convolution
and each pool floors it by half, so ``E = 64 * floor(H / 16) * floor(W / 16)``: 64 for Omniglot's
28×28, 1600 for miniImageNet's 84×84.

**ResNet-12** (Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved
few-shot learning"; Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization"):
four residual stages with 64, 160, 320 and 640 channels, each

    h_{l+1} = MaxPool_{2x2}(LeakyReLU_{0.1}(F(h_l) + BN(Conv_{1x1}(h_l))))

where ``F`` is three [3×3 conv, BN] layers with LeakyReLU(0.1) between them, followed by global
average pooling, so ``E = 640`` for any input of at least 16×16. (DropBlock regularisation,
used by MetaOptNet, is not included.)

**MLP**: for feature vectors (e.g. pre-extracted embeddings), ``Linear → ReLU`` hidden layers and
a final ``Linear``; inputs of any shape are flattened, so ``E = out_features``.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from fewcore import Backbone, hookimpl
from fewcore.hookspecs import Register

#: a 2×2 max-pool halves (and floors) each spatial side; four stages divide by 16
_DOWNSAMPLING = 16


def _in_channels(name: str, in_channels: int | None, item_shape: Sequence[int] | None, default: int) -> int:
    """The input channels: ``item_shape[0]`` when an item shape is given, else ``in_channels``."""
    if item_shape is None:
        return default if in_channels is None else in_channels
    if len(item_shape) != 3:
        raise ValueError(f"{name} takes images (C, H, W); the items have shape {tuple(item_shape)}")
    if in_channels is not None and in_channels != item_shape[0]:
        raise ValueError(
            f"{name}: in_channels={in_channels} contradicts the items' shape {tuple(item_shape)}; "
            "leave in_channels out, it is taken from the items"
        )
    return int(item_shape[0])


def _check_sizes(name: str, **sizes: int | Sequence[int]) -> None:
    """Raise a ValueError naming the option unless each size (or each entry of a list of sizes) is
    an integer of at least 1; torch would otherwise fail later on a negative tensor dimension."""
    for option, value in sizes.items():
        entries = list(value) if isinstance(value, Sequence) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in entries):
            raise ValueError(f"{name}: {option} must be {'integers' if isinstance(value, Sequence) else 'an integer'} >= 1; got {value!r}")


def _check_image_shape(name: str, input_shape: tuple[int, ...], in_channels: int) -> tuple[int, int]:
    """Validate a ``(C, H, W)`` input shape for a 4-stage conv net; returns ``(H, W)``."""
    if len(input_shape) != 3 or input_shape[0] != in_channels:
        raise ValueError(
            f"{name} expects images of shape ({in_channels}, H, W) (in_channels={in_channels}), "
            f"got input shape {tuple(input_shape)}"
        )
    height, width = input_shape[1], input_shape[2]
    if height < _DOWNSAMPLING or width < _DOWNSAMPLING:
        raise ValueError(
            f"{name} halves the image four times, so it needs at least {_DOWNSAMPLING}x{_DOWNSAMPLING} "
            f"pixels; got {height}x{width}"
        )
    return height, width


class _ImageBackbone(Backbone):
    """Shared input validation for the convolutional backbones."""

    in_channels: int

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """A 28×28 image with ``in_channels`` channels (Omniglot-sized)."""
        return (self.in_channels, 28, 28)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects a batch of images [batch, {self.in_channels}, H, W], "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        _check_image_shape(type(self).__name__, tuple(x.shape[1:]), self.in_channels)


class Conv4(_ImageBackbone):
    """Four [3×3 conv, batch norm, ReLU, 2×2 max-pool] blocks, flattened (each block pools
    before its ReLU, which gives the same result for less work).

    Args:
        in_channels: channels of the input images (1 for Omniglot, 3 for RGB); default
            ``item_shape[0]``, or 1 without an item shape.
        hidden_channels: channels of every block (64 in the papers).
        item_shape: the shape ``(C, H, W)`` of one item (the engine passes the dataset's).
    """

    def __init__(
        self, in_channels: int | None = None, hidden_channels: int = 64, item_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.in_channels = _in_channels("Conv4", in_channels, item_shape, default=1)
        _check_sizes("Conv4", in_channels=self.in_channels, hidden_channels=hidden_channels)
        self.hidden_channels = hidden_channels
        blocks = []
        channels = self.in_channels
        for _ in range(4):
            # Pooling before the ReLU computes the same function (both are monotone, so
            # max(relu(x)) = relu(max(x)), gradients included) with a quarter of the ReLU work.
            blocks += [
                nn.Conv2d(channels, hidden_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(hidden_channels),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            channels = hidden_channels
        self.features = nn.Sequential(*blocks)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        """``hidden_channels * floor(H/16) * floor(W/16)`` for ``input_shape = (C, H, W)``."""
        height, width = _check_image_shape("Conv4", tuple(input_shape), self.in_channels)
        return self.hidden_channels * (height // _DOWNSAMPLING) * (width // _DOWNSAMPLING)

    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(hidden_channels, floor(H/16), floor(W/16))`` for ``input_shape = (C, H, W)``."""
        height, width = _check_image_shape("Conv4", tuple(input_shape), self.in_channels)
        return (self.hidden_channels, height // _DOWNSAMPLING, width // _DOWNSAMPLING)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[batch, in_channels, H, W]`` images → ``[batch, hidden_channels, H/16, W/16]`` feature maps."""
        self._check_input(x)
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: ``[batch, in_channels, H, W]`` images, H and W at least 16.

        Returns:
            ``[batch, E]`` embeddings, ``E = embedding_size(x.shape[1:])``.
        """
        return self.forward_features(x).flatten(1)


class _ResidualStage(nn.Module):
    """Three [3×3 conv, BN] layers with a 1×1-conv shortcut, LeakyReLU, then 2×2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]
            if i < 2:
                layers.append(nn.LeakyReLU(negative_slope))
            channels = out_channels
        self.residual = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.activation = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.residual(x) + self.shortcut(x)))


class ResNet12(_ImageBackbone):
    """ResNet-12: four residual stages and global average pooling.

    Args:
        in_channels: channels of the input images (3 for miniImageNet, 1 for Omniglot); default
            ``item_shape[0]``, or 3 without an item shape.
        channels: output channels of the four stages.
        negative_slope: slope of the LeakyReLU activations.
        item_shape: the shape ``(C, H, W)`` of one item (the engine passes the dataset's).
    """

    def __init__(
        self,
        in_channels: int | None = None,
        channels: Sequence[int] = (64, 160, 320, 640),
        negative_slope: float = 0.1,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet12 has four stages, so channels needs 4 entries; got {list(channels)}")
        self.in_channels = _in_channels("ResNet12", in_channels, item_shape, default=3)
        _check_sizes("ResNet12", in_channels=self.in_channels, channels=channels)
        self.channels = tuple(channels)
        stages = []
        previous = self.in_channels
        for out in self.channels:
            stages.append(_ResidualStage(previous, out, negative_slope))
            previous = out
        self.stages = nn.Sequential(*stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=negative_slope)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        """The last stage's channel count (640 by default), for any image of at least 16×16."""
        _check_image_shape("ResNet12", tuple(input_shape), self.in_channels)
        return self.channels[-1]

    def feature_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(channels[-1], floor(H/16), floor(W/16))`` for ``input_shape = (C, H, W)``."""
        height, width = _check_image_shape("ResNet12", tuple(input_shape), self.in_channels)
        return (self.channels[-1], height // _DOWNSAMPLING, width // _DOWNSAMPLING)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[batch, in_channels, H, W]`` images → ``[batch, channels[-1], H/16, W/16]`` feature maps."""
        self._check_input(x)
        return self.stages(x)

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: ``[batch, in_channels, H, W]`` images, H and W at least 16.

        Returns:
            ``[batch, channels[-1]]`` embeddings.
        """
        return self.forward_features(x).mean(dim=(2, 3))


class MLP(Backbone):
    """A multilayer perceptron for feature vectors: ``Linear → ReLU`` per hidden layer, then ``Linear``.

    Args:
        in_features: size of one (flattened) input item; default ``prod(item_shape)``, or 64
            without an item shape.
        hidden_features: sizes of the hidden layers (empty for a single linear map).
        out_features: the embedding size E.
        item_shape: the shape of one item (the engine passes the dataset's).
    """

    def __init__(
        self,
        in_features: int | None = None,
        hidden_features: Sequence[int] = (128,),
        out_features: int = 64,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if item_shape is None:
            in_features = 64 if in_features is None else in_features
        elif in_features is not None and in_features != math.prod(item_shape):
            raise ValueError(
                f"MLP: in_features={in_features} contradicts the items' shape {tuple(item_shape)} "
                f"({math.prod(item_shape)} features); leave in_features out, it is taken from the items"
            )
        else:
            in_features = math.prod(item_shape)
        _check_sizes("MLP", in_features=in_features, hidden_features=hidden_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        layers: list[nn.Module] = []
        previous = in_features
        for width in hidden_features:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
            previous = width
        layers.append(nn.Linear(previous, out_features))
        self.layers = nn.Sequential(*layers)

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """A feature vector ``(in_features,)``."""
        return (self.in_features,)

    def _check_shape(self, input_shape: tuple[int, ...]) -> None:
        if math.prod(input_shape) != self.in_features:
            raise ValueError(
                f"MLP was built for items of {self.in_features} features (in_features), got items of "
                f"shape {tuple(input_shape)} = {math.prod(input_shape)} features"
            )

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        """``out_features``, for items whose flattened size is ``in_features``."""
        self._check_shape(tuple(input_shape))
        return self.out_features

    def forward(self, x: Tensor) -> Tensor:
        """Embed feature vectors.

        Args:
            x: ``[batch, *item_shape]`` items with ``prod(item_shape) == in_features``.

        Returns:
            ``[batch, out_features]`` embeddings.
        """
        if x.dim() < 2:
            raise ValueError(f"MLP expects a batch [batch, {self.in_features}], got a tensor of shape {tuple(x.shape)}")
        self._check_shape(tuple(x.shape[1:]))
        return self.layers(x.flatten(1))


@hookimpl
def fewcore_register_backbones(register: Register) -> None:
    register("conv4", Conv4)
    register("resnet12", ResNet12)
    register("mlp", MLP)
