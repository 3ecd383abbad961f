"""The examples run, the README quotes them exactly, and the demo still works.

The README's code blocks are not written by hand: each one preceded by
`<!-- snippet: FILE#NAME -->` must equal the lines between the two
`[NAME]` marker comments of FILE (dedented), so a change to an example that
is not carried to the README (or the reverse) fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import BUILD_DIR

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: (?P<file>[^#]+)#(?P<name>[\w-]+) -->\n```\w*\n(?P<code>.*?)```", re.S)


def marked_region(path: Path, name: str) -> str:
    lines = path.read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if re.fullmatch(rf"\s*(//|#) \[{re.escape(name)}\]", line)]
    assert len(marks) == 2, f"{path}: expected two [{name}] markers, found {len(marks)}"
    region = "\n".join(lines[marks[0] + 1 : marks[1]])
    return textwrap.dedent(region).strip("\n") + "\n"


def readme_snippets():
    return [m.groupdict() for m in SNIPPET.finditer((ROOT / "README.md").read_text())]


def test_readme_has_snippets_from_both_examples():
    files = {s["file"] for s in readme_snippets()}
    assert {"examples/cpp/train_lamb.cpp", "examples/python/train.py", "examples/cpp/CMakeLists.txt"} <= files


@pytest.mark.parametrize("snippet", readme_snippets(), ids=lambda s: f"{s['file']}#{s['name']}")
def test_readme_snippet_is_the_example(snippet):
    expected = marked_region(ROOT / snippet["file"], snippet["name"])
    assert snippet["code"] == expected, f"README block {snippet['file']}#{snippet['name']} differs from the file"


def test_python_example_trains_and_resumes_exactly(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples/python/train.py"), str(tmp_path / "ck.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed run equals the uninterrupted one" in result.stdout


def test_fsdp2_example_resumes_exactly(tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "examples/python/train_fsdp2.py"), str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the resumed run equals the uninterrupted one bit for bit" in result.stdout


DEMO = BUILD_DIR / "holocron_demo"


@pytest.mark.skipif(not DEMO.exists(), reason="the demo is built by `make build` (holocron_demo in the build folder)")
def test_demo_runs_and_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib (requirements-dev.txt)")
    run = subprocess.run([str(DEMO), "--out", str(tmp_path), "--steps", "50", "--only", "LAMB"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^LAMB .*<- best held-out loss$", run.stdout, re.M), run.stdout
    plot = subprocess.run([sys.executable, str(ROOT / "demo/plot.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0, plot.stdout + plot.stderr
    for name in ("training.png", "rosenbrock.png", "rastrigin.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in plot.stdout


def test_demo_refuses_unknown_arguments():
    if not DEMO.exists():
        pytest.skip("the demo is built by `make build` (holocron_demo in the build folder)")
    run = subprocess.run([str(DEMO), "--steps", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--steps" in run.stderr
    run = subprocess.run([str(DEMO), "--only", "SGD"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "SGD" in run.stderr
