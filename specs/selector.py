"""Label selectors in Kubernetes syntax: ``app=web,tier!=db,env in (a,b),env notin (c),has,!gone``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from specs.meta import check_label_key, check_label_value

Operator = Literal["=", "!=", "in", "notin", "exists", "!exists"]

_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^=!\s,]*)$")
SYNTAX = "expected key=value, key!=value, key in (a,b), key notin (a,b), key or !key, separated by commas"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # != and notin

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!exists":
            return "!" + self.key
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse a selector; ValueError says which term is wrong and what is expected."""
        return cls(tuple(_parse_term(term) for term in _split(text)))

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        """Equality on every label (a ``matchLabels`` map)."""
        return cls(tuple(Requirement(k, "=", (v,)) for k, v in sorted(labels.items())))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(req) for req in self.requirements)


def _split(text: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in selector {text!r}")
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError(f"unbalanced '(' in selector {text!r}")
    terms.append(current)
    stripped = [term.strip() for term in terms]
    if stripped == [""]:
        return []
    if "" in stripped:
        raise ValueError(f"empty term in selector {text!r} ({SYNTAX})")
    return stripped


def _key(key: str, term: str) -> str:
    try:
        return check_label_key(key)
    except ValueError as exc:
        raise ValueError(f"in selector term {term!r}: {exc}") from None


def _value(value: str, term: str) -> str:
    try:
        return check_label_value(value)
    except ValueError as exc:
        raise ValueError(f"in selector term {term!r}: {exc}") from None


def _parse_term(term: str) -> Requirement:
    match = _SET.match(term)
    if match:
        values = tuple(_value(v.strip(), term) for v in match["values"].split(","))
        if values == ("",):
            raise ValueError(f"empty value list in selector term {term!r} ({SYNTAX})")
        op: Operator = "in" if match["op"] == "in" else "notin"
        return Requirement(_key(match["key"], term), op, values)
    match = _EQ.match(term)
    if match:
        op = "!=" if match["op"] == "!=" else "="
        return Requirement(_key(match["key"], term), op, (_value(match["value"], term),))
    if term.startswith("!") and re.fullmatch(r"!\s*\S+", term):
        return Requirement(_key(term[1:].strip(), term), "!exists")
    if re.fullmatch(r"[^\s=!(),]+", term):
        return Requirement(_key(term, term), "exists")
    raise ValueError(f"cannot parse selector term {term!r}: {SYNTAX}")
