"""Two optimizers stepping at the same time in two Python threads give the
same bits as one after the other (the ops release the GIL; the fused path's
scratch is per thread). One optimizer shared by two threads is not
thread-safe, as torch.optim's are not (README)."""

from __future__ import annotations

import threading

import pytest
import torch

import holocron_optim as ho
from registry import factories


def make_params(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(300, 400), (70000,)] + [(i + 1, 3) for i in range(20)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def train(make, params, seed, steps=5):
    opt = make(params)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) + 0.1 * p.detach()
        opt.step()


FACTORIES = {
    **factories(1e-2, wrappers=False),
    "Scout(LAMB)": lambda p: ho.Scout(ho.LAMB(p, lr=1e-2), sync_period=2),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_two_optimizers_in_two_threads_equal_one_after_the_other(name):
    make = FACTORIES[name]
    seq_a, seq_b = make_params(1), make_params(2)
    train(make, seq_a, 1)
    train(make, seq_b, 2)

    con_a, con_b = make_params(1), make_params(2)
    errors = []

    def run(params, seed):
        try:
            train(make, params, seed)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(con_a, 1)), threading.Thread(target=run, args=(con_b, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(a, b) for a, b in zip(seq_a, con_a))
    assert all(torch.equal(a, b) for a, b in zip(seq_b, con_b))
    assert not torch.equal(seq_a[0], make_params(1)[0])
