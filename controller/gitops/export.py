"""Export into a checkout: update YAML documents in place so that they say what the store says, and
nothing else changes — comments stay on their keys, values the user wrote stay as written.

``update_document(doc, want)``: ``doc`` is a round-trip (ruamel) document from a file, ``want`` the object
as stored (its user part). When ``doc`` already means ``want`` (same resource once parsed: defaults
written out or left implicit, ``1024Mi`` or ``1Gi``), it is left untouched. Otherwise its keys are merged
towards the store's compact form: keys whose value the store changed get the new value in place, new keys
are appended, keys absent from the store's form are kept if they only restate a default (removing them
would change nothing), and removed otherwise. List items are matched by their identity (``name``,
``disk``, ``network``...) rather than by position, so an item removed from the middle takes its own
comments with it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from specs.kinds import parse_resource
from specs.meta import Resource

_IDENTITY_KEYS = ("name", "disk", "network", "host")
# A key taken out while merging: (map, index, key, value, its comment tokens, the tokens above it).
_Removed = tuple[CommentedMap, int, Any, Any, Any, Any]


def means(doc: Any, want: Resource) -> bool:
    """Whether a document parses to the same user-visible object (spec, name, labels, annotations)."""
    try:
        got = parse_resource(_plain(doc))
    except (ValidationError, ValueError, TypeError, AttributeError):
        return False
    return _user(got) == _user(want)


def _user(resource: Resource) -> tuple[Any, ...]:
    meta = resource.metadata
    return resource.kind, meta.name, dict(meta.labels), dict(meta.annotations), resource.spec


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def update_document(doc: Any, compact: dict[str, Any], want: Resource) -> Any:
    """``doc`` changed in place (or replaced, when it is not a mapping) to mean ``want``; ``compact`` is
    ``want`` as the API writes it (defaults left out). Returns the document to write."""
    if means(doc, want):
        return doc
    if not isinstance(doc, CommentedMap):
        return compact
    restated: list[_Removed] = []
    _merge(doc, compact, restated)
    # Put back what the store's compact form leaves out when it only restates a default; what stays out
    # takes the comment lines above it along.
    for parent, index, key, value, comment, leading in reversed(restated):
        parent.insert(min(index, len(parent)), key, value)
        if comment is not None:
            parent.ca.items[key] = comment
        if not means(doc, want):
            del parent[key]
            _cut_comment_lines(leading)
    return doc if means(doc, want) else compact


def _identity(item: Any) -> tuple[str, Any] | None:
    if isinstance(item, dict):
        for key in _IDENTITY_KEYS:
            if key in item:
                return key, item[key]
    return None


def _last_holder(node: Any) -> tuple[Any, Any] | None:
    """The container and key (or index) holding the comment that follows ``node``'s last line."""
    if isinstance(node, CommentedMap) and node:
        key = list(node)[-1]
        return _last_holder(node[key]) or (node, key)
    if isinstance(node, CommentedSeq) and node:
        return _last_holder(node[-1]) or (node, len(node) - 1)
    return None


def _leading_comment(parent: Any, index: int) -> list[Any] | None:
    """ruamel keeps the comment lines above a key or list item at the end of the line before it (the last
    line of the previous sibling): the comment-token list holding them, or None."""
    if index == 0:
        return None
    keys = list(parent) if isinstance(parent, CommentedMap) else list(range(len(parent)))
    previous = parent[keys[index - 1]]
    container, key = _last_holder(previous) or (parent, keys[index - 1])
    tokens: list[Any] | None = container.ca.items.get(key)
    return tokens


def _cut_comment_lines(tokens: list[Any] | None) -> None:
    """Keep a line's own end-of-line comment, drop the full comment lines after it."""
    if not tokens:
        return
    for slot in (2, 0):
        token = tokens[slot] if slot < len(tokens) else None
        if token is None or "\n" not in token.value:
            continue
        first = token.value[: token.value.index("\n") + 1]
        if first.strip():
            token.value = first
        else:
            tokens[slot] = None
        return


def _merge(target: Any, new: Any, restated: list[_Removed]) -> Any:
    if isinstance(target, CommentedMap) and isinstance(new, dict):
        for index, key in reversed(list(enumerate(target))):
            if key not in new:
                restated.append((target, index, key, target[key], target.ca.items.get(key),
                                 _leading_comment(target, index)))
                del target[key]
        for key, value in new.items():
            target[key] = _merge(target[key], value, restated) if key in target else value
        return target
    if isinstance(target, CommentedSeq) and isinstance(new, list):
        return _merge_list(target, new, restated)
    return new


def _merge_list(target: CommentedSeq, new: list[Any], restated: list[_Removed]) -> Any:
    old_ids = [_identity(item) for item in target]
    new_ids = [_identity(item) for item in new]
    if None in old_ids or None in new_ids or len(set(new_ids)) != len(new_ids):
        # Plain values, or items without an identity: position by position.
        del target[len(new):]
        for i, value in enumerate(new):
            if i < len(target):
                target[i] = _merge(target[i], value, restated)
            else:
                target.append(value)
        return target
    for i in reversed(range(len(target))):
        if old_ids[i] not in new_ids:
            _cut_comment_lines(_leading_comment(target, i))
            del target[i]
    kept = {_identity(item): item for item in target}
    if [_identity(item) for item in target] != [i for i in new_ids if i in kept]:
        return new  # reordered: the store's order wins (comments on items cannot follow reliably)
    for position, (ident, value) in enumerate(zip(new_ids, new, strict=True)):
        if ident in kept:
            _merge(kept[ident], value, restated)
        else:
            target.insert(position, value)
    return target
