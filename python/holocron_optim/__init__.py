"""holocron-optim: holocron.optim's optimizers with their math in C++ (torch.ops.holocron)."""

from . import _library  # noqa: F401  (registers torch.ops.holocron)
from .optimizers import LAMB, LARS, AdaBelief, AdamP, Adan, AdEMAMix, RaLars, TAdam
from .wrapper import Lookahead, Scout

__all__ = ["LARS", "LAMB", "RaLars", "TAdam", "AdaBelief", "AdamP", "Adan", "AdEMAMix", "Lookahead", "Scout"]
__version__ = "0.1.0"
