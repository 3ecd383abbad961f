"""holocron-optim: holocron.optim's optimizers with their math in C++ (torch.ops.holocron).

Drop-in replacements for ``holocron.optim`` (package ``pylocron`` 0.3.0): the same
constructor arguments, defaults, ``param_groups`` and ``state_dict`` layout (checkpoints
load both ways), with the math in the C++ library the LibTorch users link. The numbers
are the reference's, step for step, except for a few deliberate fixes, listed in each
class's docstring.

Optimizers: LARS, LAMB, RaLars, TAdam, AdaBelief, AdamP, Adan, AdEMAMix.
Wrappers around any ``torch.optim.Optimizer``: Lookahead, Scout.

Example::

    import torch
    from holocron_optim import LAMB, Lookahead

    model = torch.nn.Linear(10, 2)
    opt = Lookahead(LAMB(model.parameters(), lr=1e-3, weight_decay=0.01), sync_period=5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    torch.save(opt.state_dict(), "opt.pt")
"""

from . import _library  # noqa: F401  (registers torch.ops.holocron)
from .optimizers import *  # noqa: F403  (the algorithms: optimizers.__all__)
from .optimizers import __all__ as _algorithms
from .wrapper import Lookahead, Scout

__all__ = [*_algorithms, "Lookahead", "Scout"]
__version__ = "0.1.0"
