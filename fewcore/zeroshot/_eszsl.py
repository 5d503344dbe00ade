"""ESZSL: "An embarrassingly simple approach to zero-shot learning" (Romera-Paredes and Torr, ICML 2015).

In the paper's notation, X ∈ R^{d×m} holds the m training items' d features as columns,
Y ∈ {-1, 1}^{m×z} their labels over the z seen classes (1 for the item's class, -1 elsewhere),
and S ∈ R^{a×z} the classes' a-dimensional descriptions as columns. The model is a bilinear
compatibility ``xᵀ V s`` with V ∈ R^{d×a}, chosen to minimise

    ‖Xᵀ V S − Y‖²_F + γ ‖V S‖²_F + λ ‖Xᵀ V‖²_F + β ‖V‖²_F,

whose minimiser for β = γλ has the closed form (eq. 5 of the paper)

    V = (X Xᵀ + γ I)⁻¹ X Y Sᵀ (S Sᵀ + λ I)⁻¹.

A test item x goes to the class ``argmax_i xᵀ V s_i`` over the candidate classes' descriptions
s_i, which need not have been seen in training. The two solves are done in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fewcore.zeroshot._model import ZeroShotModel, check_fit


class ESZSL(ZeroShotModel):
    """Closed-form bilinear compatibility between features and class descriptions.

    Args:
        gamma: γ, the regulariser of the feature side (how strongly ``V S`` is shrunk).
        lam: λ, the regulariser of the description side (how strongly ``Xᵀ V`` is shrunk).
            The paper searches both over 10^-3 .. 10^3 on validation classes.
        item_shape: unused; items are flattened to d features whatever their shape.
    """

    def __init__(self, gamma: float = 1.0, lam: float = 1.0, item_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        for name, value in (("gamma", gamma), ("lam", lam)):
            if value <= 0:
                raise ValueError(f"eszsl: {name} must be positive; got {value}")
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.register_buffer("V", torch.empty(0))

    def fit(self, x: Tensor, y: Tensor, attributes: Tensor) -> None:
        """Solve for V from ``x [m, *item_shape]``, ``y [m]`` in 0..z-1 and ``attributes [z, a]``."""
        check_fit(x, y, attributes)
        features = x.flatten(1).double().T  # X [d, m]
        signs = -torch.ones(x.shape[0], attributes.shape[0], dtype=torch.float64)
        signs[torch.arange(x.shape[0]), y] = 1.0  # Y [m, z]
        descriptions = attributes.double().T  # S [a, z]
        d, a = features.shape[0], descriptions.shape[0]
        left = torch.linalg.solve(features @ features.T + self.gamma * torch.eye(d, dtype=torch.float64), features @ signs)
        right = descriptions @ descriptions.T + self.lam * torch.eye(a, dtype=torch.float64)
        # (XXᵀ+γI)⁻¹ XY Sᵀ (SSᵀ+λI)⁻¹ = left Sᵀ right⁻¹; right is symmetric, so solve from the left.
        self.V = torch.linalg.solve(right, (left @ descriptions.T).T).T.float()

    def scores(self, x: Tensor, attributes: Tensor) -> Tensor:
        """``[n, C]`` compatibilities ``xᵀ V s_c`` of ``x [n, *item_shape]`` with ``attributes [C, a]``."""
        if self.V.numel() == 0:
            raise RuntimeError("eszsl: call fit() before scores()")
        return x.flatten(1).float() @ self.V @ attributes.float().T
