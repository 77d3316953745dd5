"""A backend's typed `[<backend>]` profile table: a frozen dataclass validated like the rest of a
profile (every problem collected, named `table.key`) and written back into the resolved profile.

Kept free of heavy imports: profile validation (and so `edgeft --help`) reads it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping


class BackendOptions:
    """Mixin for a backend's options dataclass. `CHOICES` names the allowed values of a field."""

    CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def parse(cls, raw: Mapping[str, Any], problems: list[tuple[str, str]], *, table: str) -> "BackendOptions":
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"{table}.{key}"
            if key not in known:
                allowed = ", ".join(sorted(known)) or f"none: backend {table} takes no options"
                problems.append((where, f"unknown key (allowed: {allowed})"))
                continue
            why = _type_problem(getattr(cls, key), value)
            if why is None and key in cls.CHOICES and value not in cls.CHOICES[key]:
                why = f"must be one of {', '.join(repr(c) if c == '' else str(c) for c in cls.CHOICES[key])}, got {value!r}"
            if why:
                problems.append((where, why))
            else:
                values[key] = value
        return cls(**values)

    def to_toml(self, table: str) -> list[str]:
        """The table as TOML lines, for the resolved profile saved beside an artifact (none when empty)."""
        names = [f.name for f in fields(self)]  # type: ignore[arg-type]
        if not names:
            return []
        return ["", f"[{table}]"] + [f"{n} = {_toml_value(getattr(self, n))}" for n in names]


def _type_problem(default: Any, value: Any) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    return None if isinstance(value, str) else f"expected a string, got {value!r}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@dataclass(frozen=True)
class NoOptions(BackendOptions):
    """For a backend without a table of its own."""
