"""Numeric precision and memory format of a phase (training, evaluation, prediction), in one place.

Every phase of the engine runs its learner through a :class:`ComputeMode`: the learner's
parameters are put in the chosen memory format once (:meth:`ComputeMode.prepare`), its forward
passes run under :meth:`ComputeMode.autocast`, and training scales its loss with
:meth:`ComputeMode.grad_scaler` (a no-op except in float16). Models never see these options:
autocast picks the dtype of each ATen op (convolutions and products in 16 bits, reductions
and the fused distance ops in float32), and a convolution whose weight is channels-last
returns channels-last activations, so the format follows through the network by itself. A
learner that computes with weights of its own making (MAML's adapted weights) keeps their
format itself: a 1-channel input is both formats, so the first adapted layer would lose it.

``"auto"`` is the fastest setting measured on each kind of device (benchmarks/README.md):

- CPU: bfloat16 autocast when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX; a
  ProtoNet Conv4 training step at 28×28 ran 2.4–2.8× faster than float32 channels-first with
  channels-last, evaluation 3.8×), float32 otherwise; channels-last always (1.26× alone in
  float32). float16 autocast is allowed but not chosen: it ran 74× slower than float32 on that
  CPU (torch 2.14.1).
- CUDA: float32 and the default (channels-first) format, as before these options existed: no
  GPU was available to measure a better default, so none is claimed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from fewcore.config import PRECISIONS

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_has_native_bfloat16() -> bool:
    # torch exposes these CPU feature probes only as private functions of torch.cpu; without
    # them (another torch) the default falls back to float32, which is never wrong.
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def default_precision(device: torch.device) -> str:
    """The measured-fastest precision of ``device`` (see the module docstring)."""
    if device.type == "cpu" and _cpu_has_native_bfloat16():
        return "bf16"
    return "fp32"


def default_channels_last(device: torch.device) -> bool:
    """The measured-fastest memory format of ``device``: channels-last on the CPU."""
    return device.type == "cpu"


@dataclass(frozen=True)
class ComputeMode:
    """How a phase computes: autocast dtype and memory format, resolved for one device.

    Attributes:
        device: where the learner runs.
        precision: ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"`` (autocast to that dtype).
        channels_last: whether 4-d parameters (convolution weights) are channels-last.
    """

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def resolve(cls, precision: str, channels_last: bool | str, device: torch.device | str) -> ComputeMode:
        """The mode for config values, ``"auto"`` replaced by the measured default of ``device``.

        Args:
            precision: one of :data:`PRECISIONS`.
            channels_last: True, False or ``"auto"``.
            device: where the learner runs.

        Raises:
            ValueError: a value outside those above.
        """
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or \"auto\"; got {channels_last!r}")
        return cls(
            device=device,
            precision=default_precision(device) if precision == "auto" else precision,
            channels_last=default_channels_last(device) if channels_last == "auto" else bool(channels_last),
        )

    def prepare(self, learner: nn.Module) -> nn.Module:
        """Put ``learner``'s 4-d parameters and buffers in this mode's memory format (in place; values unchanged)."""
        return learner.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def autocast(self) -> ContextManager[None]:
        """The context the learner's forward runs in (the backward runs outside it)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled only for float16 (whose small gradients would underflow).

        Disabled, ``scale`` returns the loss unchanged, ``step`` simply steps the optimizer and
        ``state_dict`` is empty.
        """
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def __str__(self) -> str:
        return f"{self.precision}, {'channels-last' if self.channels_last else 'channels-first'}"
