"""Text normalization, garbage detection and exact-duplicate removal."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from edgeft.data.schema import Record

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000\u2000-\u200a\u202f\u205f]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_LETTER = re.compile(r"[^\W\d_]")  # any Unicode letter (CJK included)


def normalize_text(text: str) -> str:
    """NFC; drop control and zero-width characters; one space for runs of spaces/tabs inside a line;
    trailing spaces dropped; at most one blank line in a row. Newlines and leading indentation are
    kept, because code and lists depend on them."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines = []
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)]
        lines.append(indent + _SPACES.sub(" ", body).rstrip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalize_record(rec: Record) -> Record:
    rec.input = normalize_text(rec.input)
    if rec.target is not None:
        rec.target = normalize_text(rec.target)
        if not rec.target:
            rec.target = None  # an empty target is a missing target: the teacher writes one
    return rec


def garbage_reason(text: str, *, max_char_share: float, min_distinct_chars: int, numbers_ok: bool = False) -> str | None:
    """Why `text` is not worth training on, or None. Empty, no letters at all, or one character
    repeated ("!!!!!!", "aaaaaaa", "哈哈哈哈哈哈"). `numbers_ok` (an answer): a number, a year, a
    date or a 0/1 label is an answer, not garbage, however few letters or many zeros it has."""
    if not text:
        return "empty"
    compact = "".join(text.split())
    if numbers_ok and not _LETTER.search(text) and any(c.isdigit() for c in compact):
        return None  # 4, .5, $5, −5, (3), #1, 2+2=4, 1776-07-04
    if not _LETTER.search(text):
        return "no letters or digits" if numbers_ok else "no letters"
    # One character dominating: in a short text only when it is the only one ("Say aaaa" is a request).
    top = max(compact.count(c) for c in set(compact))
    if len(compact) >= 6 and len(set(compact)) == 1:
        return "repeated characters"
    if len(compact) >= 12 and (top / len(compact) > max_char_share or len(set(compact)) < min_distinct_chars):
        return "repeated characters"
    return None


def content_key(rec: Record) -> str:
    """Exact-duplicate key: case-folded input and target after normalization."""
    h = hashlib.sha256(rec.input.casefold().encode("utf-8"))
    h.update(b"\x00")
    h.update((rec.target or "").casefold().encode("utf-8"))
    return h.hexdigest()
