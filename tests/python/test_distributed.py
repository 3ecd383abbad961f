"""Distributed training on 2 gloo processes (CPU): FSDP2 (fully_shard) on 1-D
and 2-D meshes, DDP, and torch.distributed.checkpoint.

The two ranks are started once for the whole module (the fixture `runs`); they
run every case of the selected scenarios (_distributed_worker.py) and write what
they collected to files, and the tests below only compare, so each failure
names its optimizer. A rank's traceback is shown by the test of its case; the
ranks are killed after LAUNCH_TIMEOUT_S, or soon after one of them dies.

HOLOCRON_OPTIM_DIST_STANDIN=1 runs the same cases with torch.optim.Adam/SGD in
place of ours: a check of this harness (class-specific checks are skipped).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        import torch.distributed.checkpoint.state_dict  # noqa: F401
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and _fsdp2_available()),
    reason="needs torch.distributed with the gloo backend and FSDP2 (fully_shard)",
)

if dist.is_available():
    import _distributed_worker as worker
else:  # pragma: no cover
    worker = None

WORKER = Path(__file__).with_name("_distributed_worker.py")
WORLD = 2
SCENARIOS = ("fsdp", "hsdp", "tp", "ddp", "dcp", "blockwise", "compiled")
LAUNCH_TIMEOUT_S = 120
GRACE_AFTER_DEATH_S = 5
TOL = {"rtol": 1e-9, "atol": 1e-9}
# bfloat16 models (worker.CASE_DTYPES): the gradients summed over ranks round differently from the
# single process's, so weights may land one bfloat16 unit apart (2**-8 relative).
LOW_PRECISION_TOL = {"rtol": 1e-2, "atol": 1e-2}

CASES = worker.CASES if worker else ()
COMPILED_CASES = worker.COMPILED_CASES if worker else ()
BLOCKWISE_CASES = worker.BLOCKWISE_CASES if worker else ()
HSDP_CASES = (
    [f"{shape[0]}x{shape[1]}-{n}" for shape in worker.HSDP_MESHES for n in worker.HSDP_CASES] if worker else []
)


class Runs:
    def __init__(self, results: list[dict[str, Any]], diagnostics: str) -> None:
        self.results, self.diagnostics = results, diagnostics

    @property
    def standin(self) -> bool:
        return any(r.get("_meta", {}).get("standin", False) for r in self.results)

    def case(self, scenario: str, case: str) -> list[dict[str, Any]]:
        """Every rank's result for the case; fails the test with the ranks' tracebacks."""
        found = [r.get(scenario, {}).get(case) for r in self.results]
        if any(f is None for f in found):
            missing = [rank for rank, f in enumerate(found) if f is None]
            pytest.fail(f"{scenario}/{case}: no result from rank(s) {missing}\n{self.diagnostics}", pytrace=False)
        errors = [(rank, f["error"]) for rank, f in enumerate(found) if "error" in f]
        if errors:
            shown, text = [], []
            for rank, tb in errors:
                last = tb.strip().splitlines()[-1] if tb.strip() else ""
                if last in shown:  # the same error as a rank already shown
                    text.append(f"--- rank {rank}: the same error ---")
                else:
                    shown.append(last)
                    text.append(f"--- rank {rank} ---\n{tb}")
            text = "\n".join(text)
            pytest.fail(f"{scenario}/{case} raised:\n{text}", pytrace=False)
        return found


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:] if text else "(empty)"


def launch(out_dir: Path, scenarios: tuple[str, ...]) -> Runs:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    procs, logs = [], []
    for rank in range(WORLD):
        log_path = out_dir / f"rank{rank}.log"
        logs.append(log_path)
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(rank), str(WORLD), str(out_dir / "store"), str(out_dir),
                 ",".join(scenarios)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(WORKER.parent),
            ))
    start = time.monotonic()
    notes = []
    died_at = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if died_at is None and any(p.poll() not in (None, 0) for p in procs):
            died_at = now
        if now - start > LAUNCH_TIMEOUT_S:
            notes.append(f"killed after {LAUNCH_TIMEOUT_S} s")
            break
        if died_at is not None and now - died_at > GRACE_AFTER_DEATH_S:
            notes.append("a rank died: the others were killed")
            break
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    results = []
    for rank in range(WORLD):
        found: dict[str, Any] = {}
        for path in sorted((out_dir / f"rank{rank}").glob("*.pt")):
            try:
                value = torch.load(path, weights_only=False)
            except Exception as error:  # pragma: no cover - a file cut short
                notes.append(f"rank {rank}: {path.name} unreadable: {error!r}")
                continue
            if path.stem == "_meta":
                found["_meta"] = value
            else:
                scenario, case = value.pop("case").split("/", 1)
                found.setdefault(scenario, {})[case] = value
        results.append(found)
    diagnostics = "\n".join(
        [f"ranks ran {time.monotonic() - start:.1f} s; exit codes {[p.returncode for p in procs]}", *notes]
        + [f"--- rank {rank} output (tail) ---\n{_tail(log)}" for rank, log in enumerate(logs)]
    )
    return Runs(results, diagnostics)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Runs:
    """One launch of the ranks for the module, running the scenarios of the selected tests."""
    selected = {item.originalname.split("_")[1] for item in request.session.items if item.module is request.module}
    return launch(tmp_path_factory.mktemp("distributed"), tuple(s for s in SCENARIOS if s in selected))


# ------------------------------------------------------------- comparisons

def _close(got: torch.Tensor, expected: torch.Tensor, what: str, exact: bool, tol: dict[str, float] = TOL) -> None:
    if exact:
        same = got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected)
        if not same:
            detail = ""
            if got.shape == expected.shape and got.is_floating_point() and expected.is_floating_point():
                detail = f", max |diff| {float((got.double() - expected.double()).abs().max()):.3e}"
            raise AssertionError(
                f"{what}: not bitwise equal ({got.dtype}{tuple(got.shape)} vs "
                f"{expected.dtype}{tuple(expected.shape)}{detail})"
            )
    else:
        torch.testing.assert_close(got, expected, equal_nan=True, msg=lambda m: f"{what}: {m}", **tol)


def assert_same_run(got: dict[str, Any], expected: dict[str, Any], exact: bool = False, case: str = "") -> None:
    tol = LOW_PRECISION_TOL if worker and case in worker.CASE_DTYPES else TOL
    assert sorted(got["params"]) == sorted(expected["params"])
    for name, value in expected["params"].items():
        _close(got["params"][name], value, f"parameter {name}", exact, tol)
    for name, state in expected["state"].items():
        assert sorted(got["state"][name]) == sorted(state), f"state keys of {name}"
        for key, value in state.items():
            _close(got["state"][name][key], value, f"state {name}/{key}", exact, tol)
    for extra in ("slow_params", "last_sync_rate", "fast_steps"):
        assert (extra in got) == (extra in expected), extra
    if "slow_params" in expected:
        assert len(got["slow_params"]) == len(expected["slow_params"])
        for i, (g, e) in enumerate(zip(got["slow_params"], expected["slow_params"])):
            _close(g, e, f"slow_params[{i}]", exact, tol)
    if "last_sync_rate" in expected:
        g, e = got["last_sync_rate"], expected["last_sync_rate"]
        assert not math.isnan(e), "the run never synced"
        assert (g == e) if exact else math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9), f"last_sync_rate {g} vs {e}"
    if "fast_steps" in expected:
        assert got["fast_steps"] == expected["fast_steps"]


def assert_sharded_state(ranks: list[dict[str, Any]]) -> None:
    """State buffers of a sharded parameter's shape are DTensors with its
    placements; plain tensors in the state (steps, LAMB's local_lr) agree across ranks."""
    problems = [f"rank {rank}: {p}" for rank, r in enumerate(ranks) for p in r["placement_problems"]]
    assert not problems, "\n".join(problems)
    first = ranks[0]["got"]["local_scalars"]
    for rank, r in enumerate(ranks[1:], 1):
        for name, state in first.items():
            other = r["got"]["local_scalars"][name]
            assert sorted(other) == sorted(state), f"{name}: plain state tensors differ in keys on rank {rank}"
            for key, value in state.items():
                assert torch.equal(other[key], value), f"{name}/{key} differs between rank 0 and rank {rank}"


def check_named_state(runs: Runs, case: str, result: dict[str, Any]) -> None:
    """The buffers the issue names are among those compared (not silently absent)."""
    if runs.standin:
        return
    base = case.removesuffix("(timm)").removesuffix("(8bit)").split("(")[-1].rstrip(")")
    wanted = {"LARS": {"momentum_buffer"}, "LAMB": {"exp_avg", "local_lr"}, "RaLars": {"exp_avg", "local_lr"},
              "TAdam-amsgrad": {"exp_avg", "max_exp_avg_sq"},
              "LAMB, Kahan": {"exp_avg", "local_lr", "kahan_comp"}}.get(base, {"exp_avg"})
    for name, state in result["expected"]["state"].items():
        assert wanted <= set(state), f"{name}: the state lacks {sorted(wanted - set(state))}"


# ------------------------------------------------------------------ FSDP2

@pytest.mark.parametrize("case", CASES)
def test_fsdp_matches_single_process(runs, case):
    ranks = runs.case("fsdp", case)
    check_named_state(runs, case, ranks[0])
    assert_same_run(ranks[0]["got"], ranks[0]["expected"], case=case)


@pytest.mark.parametrize("case", COMPILED_CASES)
def test_compiled_fsdp_step_matches_single_process(runs, case):
    """torch.compile(opt.step) on FSDP2's DTensors: the step runs eagerly inside the compiled
    function (a graph break), as torch.optim's compiled steps of DTensors run."""
    ranks = runs.case("compiled", case)
    assert_same_run(ranks[0]["got"], ranks[0]["expected"], case=case)


@pytest.mark.parametrize("case", CASES)
def test_fsdp_state_is_sharded_like_the_parameters(runs, case):
    ranks = runs.case("fsdp", case)
    assert set(ranks[0]["param_placements"].values()) == {"(Shard(dim=0),)"}
    assert_sharded_state(ranks)


def test_adamp_delta_takes_the_projection_branch_on_some_parameters():
    """The AdamP cases' delta projects some parameters' updates but not all
    (single process, trained as the baselines, against delta=-1e6: never, 1e6: always)."""
    if worker.STANDIN:
        pytest.skip("stand-in optimizers")
    steps = range(worker.STEPS)
    delta = worker.ADAMP_DELTA
    runs = {d: worker.baseline(worker.adamp_with_delta(d), steps, WORLD)["params"] for d in (delta, -1e6, 1e6)}
    ours, never, always = runs[delta], runs[-1e6], runs[1e6]
    assert max(float((ours[k] - never[k]).abs().max()) for k in ours) > 1e-6, f"delta={delta} never projects"
    assert max(float((ours[k] - always[k]).abs().max()) for k in ours) > 1e-6, f"delta={delta} always projects"


def test_adamp_timm_takes_each_branch():
    """The AdamP(timm) case projects some weights' updates channel by channel, some as a
    layer and some not at all (single process, trained as the baseline, the decisions
    recomputed from timm's formulas before each step)."""
    if worker.STANDIN:
        pytest.skip("stand-in optimizers")
    model = worker.make_model(0)
    opt = worker.adamp_timm(list(model.parameters()))
    taken = {"channel": 0, "layer": 0, "none": 0}
    for step in range(worker.STEPS):
        x, y = worker.batch(step, None, WORLD)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        for p in model.parameters():
            if p.dim() < 2:
                continue
            rows, grads = p.reshape(p.size(0), -1), p.grad.reshape(p.size(0), -1)
            channels = torch.nn.functional.cosine_similarity(rows, grads, dim=1, eps=1e-8).abs()
            layer = torch.nn.functional.cosine_similarity(rows.reshape(1, -1), grads.reshape(1, -1), eps=1e-8).abs()
            if channels.max() < worker.ADAMP_DELTA / math.sqrt(rows.size(1)):
                taken["channel"] += 1
            elif layer.item() < worker.ADAMP_DELTA / math.sqrt(p.numel()):
                taken["layer"] += 1
            else:
                taken["none"] += 1
        opt.step()
    assert min(taken.values()) > 0, taken


TP_CASES = worker.TP_CASES if worker else ()


@pytest.mark.parametrize("case", TP_CASES)
def test_tp_tensor_parallel_columns_match_single_process(runs, case):
    ranks = runs.case("tp", case)
    assert ranks[0]["param_placements"]["fc1.weight"] == "(Shard(dim=1),)"
    assert_same_run(ranks[0]["got"], ranks[0]["expected"])


@pytest.mark.parametrize("case", HSDP_CASES)
def test_hsdp_2d_mesh_matches_single_process(runs, case):
    ranks = runs.case("hsdp", case)
    assert set(ranks[0]["param_placements"].values()) == {"(Replicate(), Shard(dim=0))"}
    assert_same_run(ranks[0]["got"], ranks[0]["expected"])
    assert_sharded_state(ranks)


# -------------------------------------------------------------------- DDP

@pytest.mark.parametrize("case", (*CASES, *BLOCKWISE_CASES))
def test_ddp_matches_single_process(runs, case):
    ranks = runs.case("ddp", case)
    check_named_state(runs, case, ranks[0])
    assert_same_run(ranks[0]["got"], ranks[0]["expected"], case=case)
    assert_same_run(ranks[1]["got"], ranks[0]["got"], exact=True)  # the replicas stay identical


# -------------------------------------------------------------------- DCP

@pytest.mark.parametrize("case", (*CASES, *BLOCKWISE_CASES))
def test_dcp_resume_equals_uninterrupted_run_bitwise(runs, case):
    for rank, result in enumerate(runs.case("dcp", case)):
        try:
            assert_same_run(result["got"], result["expected"], exact=True)
        except AssertionError as error:
            raise AssertionError(f"rank {rank}: {error}") from None


# ------------------------------------------------------------ 8-bit state

@pytest.mark.parametrize("case", BLOCKWISE_CASES)
def test_blockwise_fsdp_codes_each_shard_on_its_own(runs, case):
    """FSDP2 with state_precision="8bit": each rank codes its own shard (blocks never span two
    ranks), the whole-tensor sums come from the decoded moments of every shard, and the scales
    are a DTensor with one row per rank, so the run equals one process whose float32 moments are
    rounded through each shard's codes after every step."""
    ranks = runs.case("blockwise", case)
    if runs.standin:
        pytest.skip("stand-in optimizers")
    got, expected = ranks[0]["got"], ranks[0]["expected"]
    assert sorted(got["params"]) == sorted(expected["params"])
    for name, value in expected["params"].items():
        _close(got["params"][name], value, f"parameter {name}", False)
    assert sorted(got["moments"]) == sorted(expected["moments"]) and len(got["moments"]) >= len(got["params"])
    for key, value in expected["moments"].items():
        _close(got["moments"][key], value, f"decoded moment {key}", False)
    empty_shards = 0
    for rank, result in enumerate(ranks):
        for key, layout in result["got"]["layout"].items():
            assert layout["codes"] == layout["param"], f"rank {rank}: {key}: codes laid out as {layout['codes']}"
            local_numel = math.prod(layout["param"][1])
            shape, placements, local_shape = layout["absmax"]
            assert placements == "(Shard(dim=0),)" and shape[0] == WORLD and local_shape == (1, shape[1]), layout
            assert shape[1] >= -(-local_numel // 256), f"rank {rank}: {key}: {shape[1]} scales for {local_numel}"
            empty_shards += local_numel == 0
    assert empty_shards > 0, "no rank held an empty shard of a coded moment"
