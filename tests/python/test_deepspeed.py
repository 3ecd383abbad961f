"""DeepSpeed ZeRO stages 1 and 2 (with and without offload_optimizer, float32 and
bf16) on its CPU accelerator with gloo: the layer-wise algorithms with
`holocron_optim.deepspeed.zero_aware` equal plain data-parallel training, and
resume bitwise. The ranks run every case once per world size
(_deepspeed_worker.py) and write their results; the tests compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is a test dependency of make test")

WORKER = Path(__file__).with_name("_deepspeed_worker.py")
ALGORITHMS = ("LARS", "LAMB", "RaLars", "TAdam", "AdamP", "Scout(LAMB)")
STAGES = ("1", "2", "2:offload")
# float32 over 10 steps: the all-reduced gradient is summed in another order than
# the whole batch's.
TOLERANCE = 1e-6
# bf16: DeepSpeed reduces the ranks' bf16 gradients; the oracle averages them in float32.
BF16_TOLERANCE = 2e-2

CASES = {
    2: [f"{a}:{s}" for a in ALGORITHMS for s in STAGES]
    + ["Lookahead(LAMB):2", "Lookahead(Scout(TAdam)):1", "Scout(LARS):2:offload", "LAMB:2:clip", "LARS:2:offload:clip"]
    + [f"{a}:2:raw" for a in ALGORITHMS[:-1]] + ["Scout(LAMB):2:raw-refused", "LAMB:3:refused", "LAMB:2:shifted", "TAdam:1:offload:shifted"]
    + [f"{a}:{s}:bf16" for a in ("LAMB", "LARS") for s in ("1", "2:offload")] + ["LAMB:2:bf16:raw", "LARS:2:bf16:raw"]
    + [f"{a}:2:offload:resume" for a in ALGORITHMS] + ["LAMB:1:resume", "Lookahead(LAMB):2:resume",
                                                        "Scout(LAMB):2:bf16:resume"]
    + [f"AdamP-timm:{s}" for s in STAGES],
    1: [f"{a}:{s}" for a in ALGORITHMS for s in ("2", "1:offload")] + ["LAMB:2:raw", "LARS:1:raw"],
}


@pytest.fixture(scope="module", params=sorted(CASES), ids=lambda world: f"world{world}")
def results(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"deepspeed-world{world}")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
         str(WORKER), str(out), ",".join(CASES[world])],
        capture_output=True, text=True, timeout=600, env=env,
    )
    ranks = [out / f"rank{r}.json" for r in range(world)]
    if run.returncode != 0 or not all(p.exists() for p in ranks):
        pytest.fail(f"the DeepSpeed ranks failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    return world, [json.loads(p.read_text()) for p in ranks]


def case(results, name: str) -> list[dict]:
    world, by_rank = results
    if name not in CASES[world]:
        pytest.skip(f"not run at world size {world}")
    found = [r[name] for r in by_rank]
    for rank, result in enumerate(found):
        if "error" in result:
            pytest.fail(f"rank {rank}, {name}:\n{result['error']}", pytrace=False)
    return found


@pytest.mark.parametrize("name", sorted({n for names in CASES.values() for n in names
                                          if set(n.split(":")[2:]) <= {"offload", "clip"}}))
def test_zero_aware_equals_plain_data_parallel_training(results, name):
    for result in case(results, name):
        assert result["difference"] < TOLERANCE


def test_a_wrapper_without_zero_aware_is_refused_naming_it(results):
    for result in case(results, "Scout(LAMB):2:raw-refused"):
        assert "zero_aware" in result["refused"]


def test_stage_3_is_refused(results):
    """Stage 3 partitions each tensor on its own (`fp32_partitioned_groups_flat`): a layout this does not read."""
    for result in case(results, "LAMB:3:refused"):
        assert result["refused"].startswith("ValueError: zero_aware: the engine runs ZeRO stage 3")


@pytest.mark.parametrize("algorithm", ALGORITHMS[:-1])
def test_without_zero_aware_the_numbers_differ(results, algorithm):
    """What zero_aware fixes: one sum per rank's slice of the flat partition, across layers."""
    world, _ = results
    stage = "2" if algorithm != "LARS" or world == 2 else "1"
    for result in case(results, f"{algorithm}:{stage}:raw"):
        assert result["difference"] > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["LAMB:2:shifted", "TAdam:1:offload:shifted"])
def test_a_layout_read_one_element_off_fails(results, name):
    for result in case(results, name):
        assert result["difference"] > 100 * TOLERANCE


@pytest.mark.parametrize("name", [f"{a}:{s}:bf16" for a in ("LAMB", "LARS") for s in ("1", "2:offload")])
def test_bf16_mixed_precision(results, name):
    algorithm = name.split(":")[0]
    raw = case(results, f"{algorithm}:2:bf16:raw")
    for result, without in zip(case(results, name), raw):
        assert result["difference"] < BF16_TOLERANCE
        assert result["difference"] < without["difference"] / 4


@pytest.mark.parametrize("name", [f"{a}:2:offload:resume" for a in ALGORITHMS]
                         + ["LAMB:1:resume", "Lookahead(LAMB):2:resume", "Scout(LAMB):2:bf16:resume"])
def test_checkpoint_resumes_bitwise(results, name):
    for result in case(results, name):
        assert result["bitwise"] and result["same_state"]
