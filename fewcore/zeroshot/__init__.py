"""Zero-shot learning: classes known only by a description (Xian et al. 2018's protocol).

A dataset describes its classes with an :class:`AttributeTable` (one vector per class);
:func:`zero_shot_split` turns it into seen-class training items, held-out seen-class items and
unseen-class items; a :class:`ZeroShotModel` (:class:`ESZSL`, :class:`Compatibility`) is fitted
on the seen classes; :func:`evaluate_zero_shot` reports ZSL accuracy and GZSL seen/unseen
accuracy and harmonic mean with 95% intervals. ``fewcore zsl CONFIG`` runs all of it.
"""

from __future__ import annotations

from fewcore.zeroshot._compat import Compatibility
from fewcore.zeroshot._data import AttributeTable, ZeroShotSplit, class_attributes, zero_shot_split
from fewcore.zeroshot._eszsl import ESZSL
from fewcore.zeroshot._metrics import Estimate, ZeroShotReport, harmonic_mean, per_class_accuracy, zero_shot_report
from fewcore.zeroshot._model import ZeroShotModel
from fewcore.zeroshot._run import MODELS, evaluate_zero_shot, load_zero_shot_config, run_zero_shot

__all__ = [
    "MODELS",
    "AttributeTable",
    "Compatibility",
    "ESZSL",
    "Estimate",
    "ZeroShotModel",
    "ZeroShotReport",
    "ZeroShotSplit",
    "class_attributes",
    "evaluate_zero_shot",
    "harmonic_mean",
    "load_zero_shot_config",
    "per_class_accuracy",
    "run_zero_shot",
    "zero_shot_report",
    "zero_shot_split",
]
