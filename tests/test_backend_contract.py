"""The backend contract: every registered backend declares what the stages need, and nothing outside
`edgeft/backends/` names one. A new backend is tested here by being registered."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from pathlib import Path

import pytest

from edgeft.backends import registry
from edgeft.backends.base import Backend, Runner
from edgeft.config import load_target
from edgeft.errors import ConfigError

NAMES = registry.backend_names()
ROOT = Path(__file__).resolve().parent.parent / "edgeft"


def _protocol_methods(proto: type) -> set[str]:
    return {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}


def test_the_three_backends_are_registered():
    assert {"gguf", "onnx", "tensorrt"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_levels_references_and_tolerances_are_consistent(name):
    spec = registry.info(name)
    assert spec.quant_levels and len(set(spec.quant_levels)) == len(spec.quant_levels)
    assert set(spec.unquantized) <= set(spec.quant_levels)
    assert set(spec.auto_levels) <= set(spec.quant_levels) and len(spec.auto_levels) > 1
    for level in spec.quant_levels:
        ref = spec.reference_level(level)
        assert ref in spec.unquantized, f"{name} {level}: reference {ref} is not an unquantized level"
        if level in spec.unquantized:
            assert ref == level or spec.reference_level(ref) == ref
    assert set(spec.tolerances) <= set(spec.unquantized) and all(0 < t < 1 for t in spec.tolerances.values())
    assert set(spec.bits_per_weight) <= set(spec.quant_levels)
    assert spec.tracked_packages and spec.summary


@pytest.mark.parametrize("name", NAMES)
def test_the_class_implements_every_declared_method(name):
    cls = type(registry.get_backend(name))
    missing = sorted(m for m in _protocol_methods(Backend) if not callable(getattr(cls, m, None)))
    assert not missing, f"{cls.__name__} lacks {missing}"
    assert cls.name == name
    for method in ("reference", "compile"):
        params = inspect.signature(getattr(cls, method)).parameters
        assert "name" in params and params["name"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "reference" in inspect.signature(cls.compile).parameters


@pytest.mark.parametrize("name", NAMES)
def test_runner_classes_implement_the_runner_protocol(name):
    """Every runner class a backend module defines (named ...Runner) has every Runner method."""
    import importlib

    module = importlib.import_module(registry.info(name).module.partition(":")[0])
    package = importlib.import_module(module.__name__.rpartition(".")[0])
    runners = []
    for mod_name in ("backend", "runner", "engine"):
        try:
            mod = importlib.import_module(f"{package.__name__}.{mod_name}")
        except ImportError:
            continue
        runners += [c for n, c in vars(mod).items() if inspect.isclass(c) and n.endswith("Runner") and c.__module__ == mod.__name__]
    assert runners, f"no runner class found for {name}"
    for cls in runners:
        missing = sorted(m for m in _protocol_methods(Runner) if not callable(getattr(cls, m, None)))
        assert not missing, f"{cls.__name__} lacks {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_options_table_parses_round_trips_and_rejects_unknown_keys(name, tmp_path):
    spec = registry.info(name)
    level = spec.quant_levels[0]
    profile = tmp_path / "p.toml"
    profile.write_text(f'backend = "{name}"\nquant = "{level}"\n')
    target = load_target(profile)
    assert isinstance(target.options, spec.options)
    again = tmp_path / "again.toml"
    again.write_text(target.to_toml())
    assert load_target(again) == dataclasses.replace(target, name="again", source=str(again))
    profile.write_text(f'backend = "{name}"\nquant = "{level}"\n[{name}]\nno_such_option = 1\n')
    with pytest.raises(ConfigError) as err:
        load_target(profile)
    assert f"{name}.no_such_option: unknown key" in err.value.one_line()


@pytest.mark.parametrize("name", NAMES)
def test_another_backends_table_is_refused(name, tmp_path):
    other = next(n for n in NAMES if n != name)
    profile = tmp_path / "p.toml"
    profile.write_text(f'backend = "{name}"\nquant = "{registry.info(name).quant_levels[0]}"\n[{other}]\n')
    with pytest.raises(ConfigError) as err:
        load_target(profile)
    assert f"the [{other}] table is for backend {other}" in err.value.one_line()


@pytest.mark.parametrize("name", NAMES)
def test_identify_does_not_claim_foreign_files(name, tmp_path):
    stranger = tmp_path / "notes.txt"
    stranger.write_text("hello")
    assert registry.info(name).identify(stranger) is None
    assert registry.info(name).identify(tmp_path) is None


def test_a_second_backend_under_a_taken_name_is_an_error():
    spec = registry.info("gguf")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(spec, module="somewhere.else:Backend"))


# ---- the no-leak rule ---------------------------------------------------------------------------

# GGUF as a model *source* is a source format, not a backend: models.py reads .gguf files the user
# gives (the default model is one). Everything else outside edgeft/backends/ names no backend.
SOURCE_FORMAT_MODULES = {"models.py"}
ALLOWED_LITERALS = {("config.py", "gguf")}  # DEFAULT_TARGET: the shipped profile `gguf`, a profile name
RUNTIME_MODULES = ("llama_cpp", "onnxruntime", "onnxruntime_genai", "tensorrt", "modelopt")


def _code_tokens(path: Path):
    """NAME tokens and string literals that are not docstrings (comments are not tokens)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    previous = tokenize.NEWLINE
    for tok in tokens:
        if tok.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL):
            previous = tok.type  # a docstring (an expression statement on its own)
            continue
        if tok.type in (tokenize.NAME, tokenize.STRING):
            yield tok
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type


def test_no_module_outside_backends_names_a_backend():
    words = set(NAMES) | {"llama", "trt"}
    suffixes = (".gguf", ".onnx", ".plan")
    leaks = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "backends" or str(rel) in SOURCE_FORMAT_MODULES:
            continue
        for tok in _code_tokens(path):
            text = tok.string
            if tok.type == tokenize.NAME:
                parts = set(text.lower().split("_"))
                if parts & words or text in RUNTIME_MODULES:
                    leaks.append(f"{rel}:{tok.start[0]}: name {text}")
            else:
                value = text.strip("rbfuRBFU").strip("'\"")
                if (value in words and (str(rel), value) not in ALLOWED_LITERALS) or value.endswith(suffixes) \
                        or value.startswith("edgeft.backends.") and value.split(".")[2] in NAMES:
                    leaks.append(f"{rel}:{tok.start[0]}: literal {text}")
    assert not leaks, "modules outside edgeft/backends/ name a backend:\n" + "\n".join(leaks)


def test_no_module_outside_backends_imports_a_backend_package():
    import ast

    leaks = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "backends" or str(rel) in SOURCE_FORMAT_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["edgeft", "backends"] and len(parts) > 2 and parts[2] in NAMES or parts[0] in RUNTIME_MODULES:
                    leaks.append(f"{rel}:{node.lineno}: imports {name}")
    assert not leaks, "\n".join(leaks)
