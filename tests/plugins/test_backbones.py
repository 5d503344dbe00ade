"""The built-in backbones: output shapes, reported embedding sizes, input errors.

The registry-driven contract checks (gradients, determinism, ...) are in tests/test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch

from fewcore.plugins.backbones import MLP, Conv4, ResNet12


@pytest.mark.parametrize(
    ("in_channels", "size", "expected"),
    [(1, (28, 28), 64), (3, (84, 84), 64 * 5 * 5), (1, (16, 16), 64), (3, (31, 45), 64 * 1 * 2)],
)
def test_conv4_embedding_size_matches_its_output(in_channels: int, size: tuple[int, int], expected: int) -> None:
    backbone = Conv4(in_channels=in_channels).eval()
    shape = (in_channels, *size)
    with torch.no_grad():
        out = backbone(torch.randn(2, *shape))
    assert backbone.embedding_size(shape) == expected
    assert out.shape == (2, expected)


def test_conv4_is_four_conv_bn_pool_relu_blocks_of_64_channels() -> None:
    layers = list(Conv4().features)
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"] * 4
    convs = [layer for layer in layers if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 4
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_conv4_pooling_before_relu_equals_the_papers_order_to_second_derivatives() -> None:
    """max(relu(x)) = relu(max(x)): the same outputs, gradients and Hessian-vector products
    (which MAML's meta-gradient takes) as the papers' [conv, BN, ReLU, pool] order."""
    torch.manual_seed(0)
    backbone = Conv4(hidden_channels=4).double()
    layers = list(backbone.features)
    papers = torch.nn.Sequential(*[m for i in range(0, 16, 4) for m in (layers[i], layers[i + 1], layers[i + 3], layers[i + 2])])
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    params = list(backbone.parameters())
    direction = [torch.randn_like(p) for p in params]
    results = []
    for net in (backbone.features, papers):
        out = net(x)
        grads = torch.autograd.grad(out.square().sum(), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, direction)), params)
        results.append([out, *grads, *hvp])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("size", "channels"), [((84, 84), (64, 160, 320, 640)), ((32, 32), (8, 16, 24, 40))])
def test_resnet12_embedding_size_matches_its_output(size: tuple[int, int], channels: tuple[int, ...]) -> None:
    backbone = ResNet12(in_channels=3, channels=channels).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, *size))
    assert backbone.embedding_size((3, *size)) == channels[-1]
    assert out.shape == (2, channels[-1])


def test_resnet12_default_is_the_64_160_320_640_network() -> None:
    backbone = ResNet12()
    assert backbone.embedding_size((3, 84, 84)) == 640
    # three 3x3 convs and a 1x1 shortcut per stage
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16
    assert 12.3e6 < sum(p.numel() for p in backbone.parameters()) < 12.5e6  # 12.4M, as in MetaOptNet


def test_mlp_flattens_items_and_reports_out_features() -> None:
    backbone = MLP(in_features=12, hidden_features=(16, 8), out_features=5)
    assert backbone(torch.randn(3, 12)).shape == (3, 5)
    assert backbone(torch.randn(3, 3, 4)).shape == (3, 5)
    assert backbone.embedding_size((3, 4)) == 5
    assert MLP(in_features=4, hidden_features=(), out_features=2)(torch.randn(1, 4)).shape == (1, 2)


@pytest.mark.parametrize(
    ("backbone", "shape", "message"),
    [
        (Conv4(in_channels=1), (3, 28, 28), r"\(1, H, W\).*\(3, 28, 28\)"),
        (Conv4(), (1, 8, 28), r"at least 16x16 .*8x28"),
        (ResNet12(in_channels=3), (1, 28, 28), r"\(3, H, W\).*\(1, 28, 28\)"),
        (MLP(in_features=10), (11,), r"10 features.*11 features"),
    ],
)
def test_wrong_input_shapes_are_explained(backbone: torch.nn.Module, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backbone.embedding_size(shape)
    with pytest.raises(ValueError, match=message):
        backbone(torch.randn(2, *shape))


def test_conv4_rejects_unbatched_images() -> None:
    with pytest.raises(ValueError, match=r"batch of images.*\(1, 28, 28\)"):
        Conv4()(torch.randn(1, 28, 28))


def test_resnet12_needs_four_stages() -> None:
    with pytest.raises(ValueError, match="4 entries"):
        ResNet12(channels=(64, 128))


@pytest.mark.parametrize("backbone", [Conv4(in_channels=3), ResNet12(in_channels=1), MLP(in_features=7)])
def test_example_input_shape_is_accepted(backbone: torch.nn.Module) -> None:
    shape = backbone.example_input_shape
    assert backbone.embedding_size(shape) > 0
    assert shape[0] == getattr(backbone, "in_channels", getattr(backbone, "in_features", None))


def test_the_item_shape_sizes_the_input_layer_and_a_contradicting_option_is_refused() -> None:
    assert Conv4(item_shape=(3, 28, 28)).in_channels == 3
    assert MLP(item_shape=(2, 5)).in_features == 10
    with pytest.raises(ValueError, match=r"in_channels=1 contradicts the items' shape \(3, 28, 28\)"):
        Conv4(in_channels=1, item_shape=(3, 28, 28))
    with pytest.raises(ValueError, match=r"in_features=4 contradicts the items' shape \(2, 5\)"):
        MLP(in_features=4, item_shape=(2, 5))
