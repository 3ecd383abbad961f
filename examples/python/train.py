"""Trains a small regression MLP with holocron_optim as a drop-in for holocron.optim.

LAMB (no weight decay on biases) wrapped in Lookahead, under a cosine LR
schedule; a checkpoint is saved halfway and resumed into new objects, as a
restarted program would, and the resumed run must end exactly where an
uninterrupted one does. Needs only torch and holocron_optim.

usage: python train.py [CHECKPOINT_PATH]
"""

import sys
import tempfile
from pathlib import Path

import torch

# [import]
# Before: from holocron.optim import LAMB, Lookahead
from holocron_optim import LAMB, Lookahead

# [import]

STEPS = 200
STEPS_BEFORE_CHECKPOINT = 100


def make_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    # [make-optimizer]
    decay = [p for name, p in model.named_parameters() if not name.endswith("bias")]
    no_decay = [p for name, p in model.named_parameters() if name.endswith("bias")]
    base = LAMB(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-1, betas=(0.9, 0.999), weight_decay=1e-2,
    )
    optimizer = Lookahead(base, sync_rate=0.5, sync_period=6)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    # [make-optimizer]
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, first_step, last_step):
    loss = None
    for step in range(first_step, last_step):
        torch.manual_seed(1000 + step)  # the batch depends on the step only
        x = torch.randn(64, 8)
        y = torch.sin(x.sum(1, keepdim=True))
        # [train-step]
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # [train-step]
    return loss.item()


def main(path: Path) -> int:
    model, optimizer, scheduler = make_run()
    first_loss = train(model, optimizer, scheduler, 0, 1)
    final_loss = train(model, optimizer, scheduler, 1, STEPS)

    half_model, half_optimizer, half_scheduler = make_run()
    train(half_model, half_optimizer, half_scheduler, 0, STEPS_BEFORE_CHECKPOINT)
    # [checkpoint]
    torch.save(
        {"model": half_model.state_dict(), "optimizer": half_optimizer.state_dict(),
         "scheduler": half_scheduler.state_dict()},
        path,
    )
    # [checkpoint]

    resumed_model, resumed_optimizer, resumed_scheduler = make_run()
    # [resume]
    checkpoint = torch.load(path)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])  # refused whole if it does not fit
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    # [resume]
    train(resumed_model, resumed_optimizer, resumed_scheduler, STEPS_BEFORE_CHECKPOINT, STEPS)

    same = all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    lr = resumed_optimizer.param_groups[0]["lr"]
    print(f"Lookahead(LAMB): loss {first_loss:.4f} -> {final_loss:.4f} in {STEPS} steps, lr now {lr:.3g}; "
          f"resumed run {'equals' if same else 'DIFFERS FROM'} the uninterrupted one")
    return 0 if same and final_loss < first_loss else 1


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as folder:
        sys.exit(main(Path(folder) / "checkpoint.pt"))
