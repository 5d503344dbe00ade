"""torchvision's VGG-16, ResNet-18 and ResNet-50 as fewcore backbones (``torchvision-vgg16``,
``torchvision-resnet18``, ``torchvision-resnet50``)."""

from fewcore_torchvision.backbones import VGG16, ResNet18, ResNet50, TorchvisionBackbone

__all__ = ["ResNet18", "ResNet50", "TorchvisionBackbone", "VGG16"]
