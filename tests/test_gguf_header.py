"""The fast GGUF header reader agrees with gguf-py's reader, and names what is wrong with a file
cut short, whether in its header or in its tensor data."""

from __future__ import annotations

import pytest

from edgeft.backends.gguf.backend import check_gguf_file, quantize
from edgeft.backends.gguf.header import ArrayValue, read_header
from edgeft.errors import ArtifactError


@pytest.fixture(scope="module")
def q4(tiny_gguf, tmp_path_factory):
    return quantize(tiny_gguf, tmp_path_factory.mktemp("hdr") / "model-q4_0.gguf", "q4_0", threads=1)


@pytest.mark.parametrize("which", ["f16", "q4_0"])
def test_header_matches_gguf_py(tiny_gguf, q4, which):
    from gguf import GGUFReader

    path = tiny_gguf if which == "f16" else q4
    ours, ref = read_header(path), GGUFReader(path)
    assert [(t.name, t.shape, t.ggml_type) for t in ours.tensors] == \
        [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in ref.tensors]
    assert [ours.data_start + t.offset for t in ours.tensors] == [int(t.data_offset) for t in ref.tensors]
    assert [t.n_bytes() for t in ours.tensors] == [int(t.n_bytes) for t in ref.tensors]
    assert ours.data_end() == max(int(t.data_offset) + int(t.n_bytes) for t in ref.tensors)
    assert set(ours.fields) == set(ref.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, value in ours.fields.items():
        field = ref.fields[key]
        if isinstance(value, ArrayValue):
            assert value.count == len(field.data), key
        else:
            assert value == field.contents(), key


def test_a_file_cut_in_its_tensor_data_is_named_truncated(q4, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(q4.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="truncated GGUF file: tensor data ends at byte"):
        check_gguf_file(bad)


def test_a_file_cut_in_its_header_is_corrupt_not_a_crash(q4, tmp_path):
    head = read_header(q4)
    for cut in (7, 30, head.data_start - 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(q4.read_bytes()[:cut])
        with pytest.raises(ArtifactError, match="corrupt GGUF file"):
            check_gguf_file(bad)
