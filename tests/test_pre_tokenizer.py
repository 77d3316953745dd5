"""The pre-tokenizer name table works both ways: detect(build(name)) == name."""

from __future__ import annotations

import json

import pytest

from edgeft.backends.gguf.tokenizer import PRE_TOKENIZER_SHAPES, build_pre_tokenizer, detect_pre_tokenizer
from edgeft.errors import UnsupportedArchitecture


def _as_json(pre) -> dict:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    return json.loads(tok.to_str())


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZER_SHAPES))
def test_round_trip(name):
    data = _as_json(build_pre_tokenizer(name))
    assert detect_pre_tokenizer(data, clean_up_spaces=(name == "starcoder"), file="t.json") == name


def test_unknown_pre_tokenizer_is_refused():
    from tokenizers import pre_tokenizers

    data = _as_json(pre_tokenizers.Whitespace())
    with pytest.raises(UnsupportedArchitecture, match="pre_tokenizer"):
        detect_pre_tokenizer(data, clean_up_spaces=False, file="t.json")


def test_unknown_name_builds_nothing():
    assert build_pre_tokenizer("no-such-pre") is None
