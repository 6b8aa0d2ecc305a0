"""The objects of an apply request: validated, with every problem named by the object's position.

Two request shapes (``POST /api/v1/apply``):

- ``application/json``: ``{"objects": [...], "prune": ..., "source": ..., "plan": ...}``, read whole;
- ``application/x-ndjson``: one object per line, then the line ``{"end": N}`` (N = the number of objects
  sent); options in the query (``?dryRun=&prune=&source=&plan=``). The server validates each batch of
  lines in a worker thread while the next ones arrive, so a client that parses its YAML as it sends
  overlaps its work with ours. A stream without its end line (the client stopped or was cut off) is
  refused and nothing is written: a half-sent Git checkout is never applied.

The answer to a stream is a stream too: one line per change, then the summary line.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import anyio
import orjson
from pydantic import ValidationError

from controller.common.wire import strip_server_fields, validation_problems
from specs.kinds import KINDS, UnknownKind, parse_resource
from specs.meta import Resource

NDJSON = "application/x-ndjson"
BATCH = 500  # lines validated per worker-thread call
END_KEY = "end"

Problem = dict[str, Any]


class StreamError(Exception):
    """The stream itself is malformed (not a problem of one object): 400, nothing written."""


def meta_of(item: dict[str, Any]) -> dict[str, Any]:
    meta = item.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _precondition(item: dict[str, Any]) -> dict[str, Any]:
    rv = meta_of(item).get("resourceVersion")
    if rv is None:
        return {}
    meta = dict(strip_server_fields(item)["metadata"])
    meta["resourceVersion"] = str(rv)
    return {"metadata": meta}


def parse_items(items: Sequence[Any], offset: int = 0) -> tuple[list[Resource], list[Problem]]:
    """Validate decoded objects; problems carry ``index`` (``offset`` + position) and a field path."""
    objects: list[Resource] = []
    problems: list[Problem] = []
    for position, item in enumerate(items):
        index = offset + position
        if not isinstance(item, dict):
            problems.append({"index": index, "field": "", "message": "expected an object"})
            continue
        if "metadata" in item and not isinstance(item["metadata"], dict):
            problems.append({"index": index, "field": "metadata", "message": "expected an object (name, labels, ...)"})
            continue
        try:
            objects.append(parse_resource(strip_server_fields(item) | _precondition(item)))
        except UnknownKind as e:
            problems.append({"index": index, "field": "kind", "message": str(e)})
        except ValidationError as e:
            name = meta_of(item).get("name")
            kind = item.get("kind")
            info = KINDS.get(kind) if isinstance(kind, str) else None
            for p in validation_problems(e, model=info.model if info is not None else None):
                problems.append({"index": index, "kind": item.get("kind"), "name": name, **p})
    return objects, problems


def parse_lines(lines: Sequence[bytes], offset: int) -> tuple[list[Resource], list[Problem]]:
    """``parse_items`` of JSON lines; a line that is not JSON is a problem of that object."""
    items: list[Any] = []
    problems: list[Problem] = []
    for position, line in enumerate(lines):
        try:
            items.append(orjson.loads(line))
        except (ValueError, RecursionError) as e:
            problems.append({"index": offset + position, "field": "", "message": f"not a JSON object: {str(e)[:120]}"})
            items.append(None)
    objects, more = parse_items(items, offset)
    bad = {p["index"] for p in problems}
    return objects, problems + [p for p in more if p["index"] not in bad]


def _end_count(line: bytes) -> int | None:
    """N of an end line ``{"end": N}``; None for any other line."""
    if not line.startswith(b'{"end"'):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and list(value) == [END_KEY] and type(value[END_KEY]) is int:
        return int(value[END_KEY])
    return None


async def read_ndjson(
    chunks: AsyncIterator[bytes], on_kind: Callable[[str], None] | None = None, many: int = 16
) -> tuple[list[Resource], list[Problem]]:
    """Every object of an NDJSON apply stream, validated; StreamError if the stream is malformed.

    One batch is validated in a worker thread while the next one is received. ``on_kind(kind)`` is called
    once per kind as soon as more than ``many`` of its objects have arrived (the store can read that kind
    ahead while the rest arrives)."""
    objects: list[Resource] = []
    problems: list[Problem] = []
    per_kind: Counter[str] = Counter()
    running: asyncio.Future[tuple[list[Resource], list[Problem]]] | None = None
    batch: list[bytes] = []
    count = 0
    end: int | None = None
    rest = b""

    async def collect() -> None:
        nonlocal running
        if running is not None:
            done, running = running, None
            got, bad = await done
            objects.extend(got)
            problems.extend(bad)
            if on_kind is not None:
                for obj in got:
                    per_kind[obj.kind] += 1
                    if per_kind[obj.kind] == many + 1:
                        on_kind(obj.kind)

    async def flush() -> None:
        nonlocal running, batch
        await collect()
        lines, batch = batch, []
        running = asyncio.ensure_future(anyio.to_thread.run_sync(parse_lines, lines, count - len(lines)))

    try:
        async for chunk in chunks:
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if not line.strip():
                    continue
                if end is not None:
                    raise StreamError("data after the end line")
                end = _end_count(line)
                if end is not None:
                    continue
                batch.append(line)
                count += 1
                if len(batch) >= BATCH:
                    await flush()
        if rest.strip():
            if end is not None:
                raise StreamError("data after the end line")
            end = _end_count(rest)
            if end is None:
                raise StreamError('the stream ended inside a line (no end line {"end": N})')
        if end is None:
            raise StreamError('the stream ended without its end line {"end": N}: the client stopped sending')
        if end != count:
            raise StreamError(f"the end line counts {end} objects, the stream carried {count}")
        if batch:
            await flush()
        await collect()
    finally:
        if running is not None:  # an error above: let the thread finish, drop its result
            await asyncio.wait([running])
    return objects, problems


def ndjson_lines(summary: dict[str, Any], changes: Iterable[dict[str, Any]]) -> Iterable[bytes]:
    """The answer to a stream: chunks of change lines (``{"change": {...}}``), then ``{"summary": ...}``."""
    chunk: list[bytes] = []
    for change in changes:
        chunk.append(orjson.dumps({"change": change}))
        if len(chunk) >= BATCH:
            yield b"\n".join(chunk) + b"\n"
            chunk = []
    chunk.append(orjson.dumps({"summary": summary}))
    yield b"\n".join(chunk) + b"\n"
