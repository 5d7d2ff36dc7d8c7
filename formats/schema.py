"""A small schema language for TOML configuration: every table and key known, every value checked.

``bench.toml`` is read by two stages (the device layer owns ``[devices.*]``, the
harness everything else), and both must answer a typo the same way: refuse it,
naming the file, the key's path and what is accepted, in one line. This module
is the one validator both use; ``harness/schema.py`` holds the whole file's
schema, composed of the harness's tables and ``devices.config.DEVICE``.

Why not pydantic: its errors are multi-line reports about Python models, which
would have to be rewritten into the one-line ``file [table] key = value: must
be ...`` form users get everywhere else in this tool; the checks needed here
(types, ranges, choices, names, unknown keys) fit in this file, and the device
layer stays free of a dependency. The nodes::

    Table({"iterations": Int(min=1), "label": Str()}, header=True)   # unknown keys refused
    MapOf(Table(...))            # [models.NAME]: any name, each value checked
    ListOf(Str(nonempty=True))   # ["a", "b"]
    Either(Str(), Table(...))    # a name or an inline table

A node's `check` returns the value (numbers as float where a `Number` is asked)
or raises `SchemaError` with the key's path. ``Table(header=True)`` marks what a
user writes as a ``[header]``; errors name the nearest header and the rest as
a dotted key: ``bench.toml [devices.pi] runtimes.onnxruntime.threads = 0: must
be an integer >= 1``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable


class SchemaError(ValueError):
    """A value does not fit the schema: `path` is where (keys from the file's root), `problem` what is wrong.

    `headers` is how many keys of `path` form the ``[header]`` the user wrote;
    `shown` is the bad value as written (empty when the key itself is wrong).
    """

    def __init__(self, path: tuple[str, ...], problem: str, headers: int = 0, shown: str = "") -> None:
        self.path, self.problem, self.headers, self.shown = path, problem, headers, shown
        super().__init__(self.message(""))

    def where(self, source: str = "") -> str:
        """``source [header] rest.of.key``: how a TOML user finds the key."""
        head, rest = self.path[:self.headers], self.path[self.headers:]
        parts = [source] if source else []
        if head:
            parts.append("[" + ".".join(toml_key(k) for k in head) + "]")
        if rest:
            parts.append(".".join(toml_key(k) for k in rest))
        return " ".join(parts) or "(top level)"

    def message(self, source: str) -> str:
        """The one line for a file named `source`: ``source [table] key = value: must be ...``."""
        shown = f" = {self.shown}" if self.shown and len(self.path) > self.headers else (
            f" {self.shown}" if self.shown else "")
        return f"{self.where(source)}{shown}: {self.problem}"


def toml_key(name: str) -> str:
    """A key as TOML writes it: bare when it can be, quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def show(value: object) -> str:
    """A value as the user wrote it (TOML-ish: strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, list)):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):  # a list holding a table or a date
            return repr(value)
    if isinstance(value, dict):
        return "a table"
    return repr(value)


class Node:
    """One place in the schema. `accepted` says in words what may go there."""

    accepted = "a value"

    def check(self, value: object, path: tuple[str, ...] = (), headers: int = 0) -> Any:
        raise NotImplementedError

    def fail(self, value: object, path: tuple[str, ...], headers: int) -> SchemaError:
        return SchemaError(path, f"must be {self.accepted}", headers, show(value))


def _number_words(kind: str, least: float | None, most: float | None, above: bool) -> str:
    low = f"{'>' if above else '>='} {least:g}" if least is not None else ""
    if least is not None and most is not None:
        return f"{kind} from {least:g} to {most:g}" if not above else f"{kind} {low} and <= {most:.10g}"
    if least is not None:
        return f"{kind} {low}"
    if most is not None:
        return f"{kind} <= {most:.10g}"
    return kind


@dataclass
class Int(Node):
    """A whole number (not a bool, not a float) within [min, max]."""

    min: int | None = None
    max: int | None = None

    @property
    def accepted(self) -> str:  # type: ignore[override]
        return _number_words("an integer", self.min, self.max, False)

    def check(self, value, path=(), headers=0):
        if (isinstance(value, bool) or not isinstance(value, int)
                or (self.min is not None and value < self.min) or (self.max is not None and value > self.max)):
            raise self.fail(value, path, headers)
        return value


@dataclass
class Number(Node):
    """An int or float within its bounds (`above`: strictly greater than `min`); returned as float."""

    min: float | None = None
    max: float | None = None
    above: bool = False

    @property
    def accepted(self) -> str:  # type: ignore[override]
        return _number_words("a number", self.min, self.max, self.above)

    def check(self, value, path=(), headers=0):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.fail(value, path, headers)
        low_ok = self.min is None or (value > self.min if self.above else value >= self.min)
        if not low_ok or (self.max is not None and value > self.max):
            raise self.fail(value, path, headers)
        return float(value)


@dataclass
class Bool(Node):
    accepted = "true or false"

    def check(self, value, path=(), headers=0):
        if not isinstance(value, bool):
            raise self.fail(value, path, headers)
        return value


@dataclass
class Str(Node):
    """A string: non-empty, one of `choices`, or matching `pattern` (described by `rule`) when asked."""

    nonempty: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    rule: str = ""

    @property
    def accepted(self) -> str:  # type: ignore[override]
        if self.choices:
            return "one of: " + ", ".join(json.dumps(c) for c in self.choices)
        if self.rule:
            return self.rule
        return "a non-empty string" if self.nonempty else "a string"

    def check(self, value, path=(), headers=0):
        if (not isinstance(value, str) or (self.nonempty and not value.strip())
                or (self.choices and value not in self.choices)
                or (self.pattern is not None and not re.fullmatch(self.pattern, value))):
            raise self.fail(value, path, headers)
        return value


@dataclass
class ListOf(Node):
    """A list whose every item fits `item` (at least one item when `nonempty`)."""

    item: Node
    nonempty: bool = False

    @property
    def accepted(self) -> str:  # type: ignore[override]
        return f"a {'non-empty ' if self.nonempty else ''}list, each {self.item.accepted}"

    def check(self, value, path=(), headers=0):
        if not isinstance(value, list) or (self.nonempty and not value):
            raise self.fail(value, path, headers)
        out = []
        for item in value:
            try:
                out.append(self.item.check(item, path, headers))
            except SchemaError:
                raise self.fail(value, path, headers) from None
        return out


@dataclass
class AnyTable(Node):
    """A table whose content another library checks (e.g. timm's ``create_model`` keyword arguments)."""

    accepted = "a table"

    def check(self, value, path=(), headers=0):
        if not isinstance(value, dict):
            raise self.fail(value, path, headers)
        return dict(value)


@dataclass
class Table(Node):
    """A table with known keys: unknown ones are refused by name, `required` ones must be there.

    `renamed` maps an old key to its new name: accepted, moved, and reported to
    `on_renamed` (the caller warns). `header`: the user writes it as ``[name]``.
    """

    fields: dict[str, Node]
    required: tuple[str, ...] = ()
    header: bool = False
    renamed: dict[str, str] = field(default_factory=dict)
    on_renamed: Callable[[tuple[str, ...], str, str], None] | None = None
    accepted = "a table"

    def check(self, value, path=(), headers=0):
        if not isinstance(value, dict):
            raise self.fail(value, path, headers)
        headers = len(path) if self.header else headers
        value = dict(value)
        for old, new in self.renamed.items():
            if old in value:
                if new in value:
                    raise SchemaError(path + (old,), f"is the old name of {new}; give only {new}", headers)
                value[new] = value.pop(old)
                if self.on_renamed is not None:
                    self.on_renamed(path, old, new)
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            if isinstance(value[unknown[0]], dict):  # written as [header] (or an inline table): say "table"
                known = ", ".join(k for k, node in self.fields.items() if isinstance(node, (Table, MapOf))) or "none"
                raise SchemaError(path + (unknown[0],), f"unknown table; known tables here: {known}", len(path) + 1)
            raise SchemaError(path + (unknown[0],), f"unknown key; known keys: {', '.join(self.fields) or 'none'}",
                              headers)
        missing = [k for k in self.required if k not in value]
        if missing:
            raise SchemaError(path + (missing[0],), "is required", headers)
        return {k: self.fields[k].check(v, path + (k,), headers) for k, v in value.items()}


@dataclass
class MapOf(Node):
    """A table of named entries (``[models.NAME]``): names fit `name`, every entry fits `value`."""

    value: Node
    name: Str | None = None
    accepted = "a table of named tables"

    def check(self, value, path=(), headers=0):
        if not isinstance(value, dict):
            raise self.fail(value, path, headers)
        out = {}
        for key, item in value.items():
            if self.name is not None:
                try:
                    self.name.check(key)
                except SchemaError:
                    raise SchemaError(path + (key,), f"name {json.dumps(key)} must be {self.name.accepted}",
                                      len(path) + 1) from None
            out[key] = self.value.check(item, path + (key,), headers)
        return out


@dataclass
class Either(Node):
    """The first of `options` that fits; `accepted` lists them all."""

    options: tuple[Node, ...]

    @property
    def accepted(self) -> str:  # type: ignore[override]
        return " or ".join(o.accepted for o in self.options)

    def check(self, value, path=(), headers=0):
        for option in self.options:
            if isinstance(option, (Table, MapOf, AnyTable)) != isinstance(value, dict):
                continue  # a table error inside a table option is the useful one; a scalar's is "must be ..."
            try:
                return option.check(value, path, headers)
            except SchemaError as exc:
                if isinstance(value, dict):
                    raise exc
        raise self.fail(value, path, headers)


__all__ = ["AnyTable", "Bool", "Either", "Int", "ListOf", "MapOf", "Node", "Number", "SchemaError", "Str", "Table",
           "show", "toml_key"]
