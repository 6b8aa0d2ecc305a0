"""Turning pydantic validation errors into what a user should read: a field path and a message
that says what was expected.

Cross-field rules raise :func:`field_error` from a model validator; the error then carries the
path of the offending field (relative to the model) in its context, and :func:`error_path` appends
it, so ``spec.cpu`` + ``maxCores`` points at ``spec.cpu.maxCores`` in the user's file.
"""

from __future__ import annotations

import datetime
import difflib
import reprlib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails, PydanticCustomError

CROSS_FIELD = "cross_field"

Loc = tuple[int | str, ...]


def field_error(path: str, message: str) -> PydanticCustomError:
    """An error about ``path`` (dotted, relative to the model being validated, e.g. ``disks.1.bootOrder``)."""
    return PydanticCustomError(CROSS_FIELD, "{message}", {"message": message, "path": path})


def error_path(error: ErrorDetails) -> Loc:
    """Location of ``error`` including the field a cross-field rule pointed at."""
    loc: Loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == CROSS_FIELD and ctx.get("path"):
        extra = tuple(int(part) if part.isdigit() else part for part in str(ctx["path"]).split("."))
        loc = loc + extra
    return loc


def format_path(loc: Sequence[int | str]) -> str:
    """``("spec", "disks", 0, "bus")`` -> ``spec.disks[0].bus``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


STATUS_IN_MANIFEST = "is written by controllers, never by users; remove it from the manifest"


def problem_message(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """``error_message``, except that ``status`` given by a user is named for what it is."""
    if error["type"] == "extra_forbidden" and tuple(error["loc"]) == ("status",):
        return STATUS_IN_MANIFEST
    return error_message(error, root)


def error_message(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """A message saying what was expected; ``root`` (the validated model) enables did-you-mean."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == CROSS_FIELD:
        return str(ctx["message"])
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        loc = tuple(error["loc"])
        name = str(loc[-1]) if loc else "?"
        allowed = allowed_fields(root, loc[:-1]) if root is not None else []
        hint = ""
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
        expected = f"; expected one of: {', '.join(sorted(allowed))}" if allowed else ""
        return f"unknown field {name!r}{hint}{expected}"
    message = f"{error['msg']}, got {_short(error.get('input'))}"
    if kind == "string_type" and isinstance(error.get("input"), (bool, int, float, datetime.date)):
        message += " (YAML reads yes/no/on/off, bare numbers and dates as such: put the value in quotes)"
    return message


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` of at most ``limit`` characters that never walks more than a few items of a container:
    a YAML alias bomb's value is huge when expanded, and a message must not expand it."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return short_repr(value)


def allowed_fields(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names (as written in YAML) of the model found by following ``loc`` from ``root``."""
    model = _model_at(root, loc)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (info for name, info in current.model_fields.items() if (info.alias or name) == part),
            None,
        )
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional, tuple[X, ...], list[X], Annotated down to the model class if there is one."""
    for _ in range(6):
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = models[0] if len(models) == 1 else annotation
            if len(models) != 1:
                return annotation
        elif origin in (tuple, list):
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation
    return annotation
