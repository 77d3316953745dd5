"""The standard record and the mapping of common user shapes onto it.

Standard: {"input": str, "target": str (optional), "metadata": {"task_type": ..., "domain": ...} (optional)}.
Also accepted: Alpaca (instruction/input/output), prompt/completion, chat `messages`
(role/content), and any column names mapped with `--field input=question`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

STANDARD_FIELDS = ("input", "target", "metadata")
# The fields each accepted shape reads; any other field of a record is not used (its name is reported,
# so that an answer column under another name is not silently left to the teacher).
SHAPE_FIELDS = {"standard": STANDARD_FIELDS, "messages": ("messages", "metadata"),
                "alpaca": ("instruction", "input", "output", "metadata"), "prompt/completion": ("prompt", "completion", "metadata")}


class RecordProblem(ValueError):
    """One record that cannot be used; the message is the reason, the reader adds file and place."""


@dataclass
class Record:
    input: str
    target: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    place: str = ""  # "line 12" / "row 3" / "item 4": where it came from, for reports
    shape: str = "standard"
    # set by the pipeline, not read from the file
    eval: bool = False
    key: str = ""  # content hash after normalization
    target_source: str = "data"  # "data" or "teacher"
    target_ends: bool = True  # False: a teacher answer its token budget cut short, trained without an end
    prompt_ids: list[int] | None = field(default=None, repr=False)  # the templated prompt, tokenized once

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.input}
        if self.target is not None:
            out["target"] = self.target
        if self.metadata:
            out["metadata"] = self.metadata
        return out


def _text(raw: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    if key not in raw or raw[key] is None:
        if required:
            raise RecordProblem(f"missing required field '{key}'")
        return None
    value = raw[key]
    if not isinstance(value, str):
        raise RecordProblem(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    meta = raw.get("metadata")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise RecordProblem(f"field 'metadata' must be an object, got {type(meta).__name__}")
    for key in ("task_type", "domain"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise RecordProblem(f"field 'metadata.{key}' must be a string, got {type(meta[key]).__name__}")
    if "augmented" in meta and not isinstance(meta["augmented"], bool):
        raise RecordProblem(f"field 'metadata.augmented' must be true or false, got {type(meta['augmented']).__name__}")
    return dict(meta)


def _from_messages(raw: Mapping[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise RecordProblem("field 'messages' must be a non-empty list of {role, content} objects")
    system: str | None = None
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordProblem(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            raise RecordProblem(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if role == "system" and i == 0:
            system = content
        elif role in ("user", "assistant"):
            turns.append((role, content))
        else:
            raise RecordProblem(f"messages[{i}].role {role!r} is not supported (system first, then user, then assistant)")
    roles = [r for r, _ in turns]
    if roles not in (["user"], ["user", "assistant"]):
        raise RecordProblem(f"messages must be one user turn and an optional assistant reply, got roles {roles}")
    meta = _metadata(raw)
    if system is not None:
        meta["system"] = system
    return turns[0][1], (turns[1][1] if len(turns) == 2 else None), meta


def to_record(raw: Any, field_map: Mapping[str, str] | None = None) -> Record:
    """Map one raw record (a dict from any reader) to a Record, or raise RecordProblem."""
    if not isinstance(raw, dict):
        raise RecordProblem(f"a record must be an object, got {type(raw).__name__}")
    if field_map:
        missing = [src for src in field_map.values() if src not in raw]
        if "input" in field_map and field_map["input"] in missing:
            raise RecordProblem(f"missing required field '{field_map['input']}' (mapped to input)")
        raw = {**{k: v for k, v in raw.items() if k not in field_map.values()},
               **{dst: raw[src] for dst, src in field_map.items() if src in raw}}
    if "messages" in raw and "input" not in raw:
        inp, tgt, meta = _from_messages(raw)
        return Record(inp, tgt, meta, shape="messages")
    # `--field target=NAME` names the answer whatever the shape: a prompt/completion or Alpaca record
    # would otherwise read its own answer field and drop the one the user mapped.
    target_key = "target" if field_map and "target" in field_map else None
    if "instruction" in raw:  # Alpaca: `input` is optional context appended to the instruction
        instruction = _text(raw, "instruction", required=True)
        extra = _text(raw, "input", required=False)
        inp = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return Record(inp, _text(raw, target_key or "output", required=False), _metadata(raw), shape="alpaca")
    if "prompt" in raw and "input" not in raw:
        return Record(_text(raw, "prompt", required=True), _text(raw, target_key or "completion", required=False),
                      _metadata(raw), shape="prompt/completion")
    return Record(_text(raw, "input", required=True), _text(raw, "target", required=False), _metadata(raw))
