"""Small backbones shared by the learner tests."""

from __future__ import annotations

import math

from torch import Tensor

from fewcore import Backbone


class Flat(Backbone):
    """No parameters: items flattened, so the learner is a linear softmax classifier whose every
    parameter is in the head (and whose gradients are known in closed form)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def embedding_size(self, input_shape: tuple[int, ...]) -> int:
        return math.prod(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)
