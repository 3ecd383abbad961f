"""Docstrings: every public class documents each constructor argument, its default and its paper."""

from __future__ import annotations

import ast
import inspect
import re

import pytest

import holocron_optim as ho
from registry import papers

CLASSES = [getattr(ho, name) for name in ho.__all__]
ARXIV_IDS = {name: list(papers(name)) for name in ho.__all__}


def _arguments(cls):
    return [
        p for name, p in inspect.signature(cls.__init__).parameters.items() if name not in ("self", "params")
    ]


def _args_section(doc: str) -> dict[str, str]:
    """The `Args:` section as {argument: its text}, entries being the lines
    indented one level below `Args:` and their continuation lines."""
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Args:")
    entries: dict[str, str] = {}
    current = None
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        else:
            assert current is not None and line.startswith(" " * 8), line
            entries[current] += " " + line.strip()
    return entries


def test_all_ten_classes_are_checked():
    assert sorted(c.__name__ for c in CLASSES) == sorted(ARXIV_IDS)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_docstring_mentions_every_argument(cls):
    doc = cls.__doc__
    assert doc, f"{cls.__name__} has no docstring"
    for parameter in _arguments(cls):
        assert parameter.name in doc, f"{cls.__name__}: argument {parameter.name!r} is not documented"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_args_section_matches_signature(cls):
    """Args lists exactly the constructor's arguments, in order, each with its true default."""
    entries = _args_section(cls.__doc__)
    expected = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    assert list(entries) == expected
    for parameter in _arguments(cls):
        text = entries[parameter.name]
        defaults = re.findall(r"Default `([^`]*)`", text)
        if parameter.default is inspect.Parameter.empty:
            assert not defaults, f"{cls.__name__}.{parameter.name} has no default: {text!r}"
            continue
        assert len(defaults) == 1, f"{cls.__name__}.{parameter.name}: {text!r}"
        assert ast.literal_eval(defaults[0]) == parameter.default, f"{cls.__name__}.{parameter.name}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_docstring_cites_the_paper(cls):
    doc = cls.__doc__
    assert "arxiv.org" in doc
    for arxiv_id in ARXIV_IDS[cls.__name__]:
        assert f"https://arxiv.org/abs/{arxiv_id}" in doc


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_docstring_sections(cls):
    doc = cls.__doc__
    first = inspect.cleandoc(doc).splitlines()[0]
    assert first.startswith(f"{cls.__name__}: ") and len(first) <= 88
    assert "State" in doc
    assert "reference (pylocron 0.3.0)" in doc


def test_module_docstring_has_an_example():
    assert "Example::" in ho.__doc__
    for name in ho.__all__:
        assert name in ho.__doc__


def test_cpp_options_and_states_declare_each_field_once():
    """C++ options and param states declare their fields with HOLOCRON_FIELD, which also lists
    them for serialization and comparison: a TORCH_ARG there would be a field no checkpoint holds."""
    from pathlib import Path

    headers = Path(__file__).resolve().parents[2] / "include" / "holocron" / "optim"
    for header in sorted(headers.glob("*.h")):
        text = header.read_text()
        for struct in re.finditer(r"struct (\w+) : detail::(?:OptionsBase|ParamStateBase)<\w+> \{(.*?)\n\};", text, re.S):
            name, body = struct.groups()
            assert "TORCH_ARG(" not in body, f"{header.name}: {name} declares a field with TORCH_ARG"
            assert "HOLOCRON_FIELDS;" in body and "HOLOCRON_FIELD(" in body, f"{header.name}: {name}"
