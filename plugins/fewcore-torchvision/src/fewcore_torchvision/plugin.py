"""The hook implementation fewcore finds through the ``fewcore`` entry point ``torchvision``."""

from __future__ import annotations

from fewcore import hookimpl
from fewcore.hookspecs import Register
from fewcore_torchvision.backbones import VGG16, ResNet18, ResNet50


@hookimpl
def fewcore_register_backbones(register: Register) -> None:
    for backbone in (VGG16, ResNet18, ResNet50):
        register(f"torchvision-{backbone.architecture}", backbone)
