"""msgspec decoding that refuses a bad request the way the official server words it.

A request struct (:class:`Request`) declares its fields in the order the
official server checks them, and for each field a rule that words its
refusal. :func:`decode` lets msgspec validate the whole payload at once (the
fast path every good request takes); only when msgspec refuses it does
:func:`explain` look for the first offending field, in declaration order, and
word the refusal from that field's rule, so a client gets the same status
and message whatever order the keys arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, ClassVar, get_args, get_origin

import msgspec

from service.errors import ResonatePatternsError

#: A missing key, as rules see it (distinct from an explicit ``null``).
ABSENT = object()
#: Words the refusal of one field from its raw value (or :data:`ABSENT`).
type Rule = Callable[[object], str]


class Fail(ResonatePatternsError):
    """Abort the current request with ``status`` and a plain-string message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request(msgspec.Struct, rename="camel"):
    """Base of the request structs: the rules that word their refusals.

    A field whose type is another request struct (or a list of them) needs
    no rule unless its non-object form has its own wording: the default is
    ``Invalid '<path>' field — must be an object``.
    """

    #: field name -> the rule wording its refusal.
    RULES: ClassVar[Mapping[str, Rule]] = {}
    #: field name -> a check on the raw object that runs before that field's
    #: own (a cross-field rule the official server applies first).
    BEFORE: ClassVar[Mapping[str, Callable[[dict[str, object]], str | None]]] = {}


def object_message(path: str) -> str:
    """The refusal of ``path`` when it is not a JSON object."""
    return f"Invalid '{path}' field — must be an object"


def decode[R: Request](raw: object, cls: type[R], path: str = "") -> R:
    """``raw`` as a ``cls``, or :class:`Fail` (400) worded as the official server words it."""
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError:
        raise Fail(400, explain(raw, cls, path)) from None


def explain(raw: object, cls: type[Request], path: str) -> str:
    """Why msgspec refused ``raw`` as a ``cls``: the first bad field, in declaration order."""
    if not isinstance(raw, dict):
        return object_message(path)
    for field in msgspec.structs.fields(cls):
        before = cls.BEFORE.get(field.name)
        problem = before(raw) if before is not None else None
        if problem is not None:
            return problem
        value = raw.get(field.encode_name, ABSENT)
        if value is ABSENT and not field.required:
            continue
        if value is not ABSENT:
            try:
                msgspec.convert(value, field.type)
                continue
            except msgspec.ValidationError:
                pass
        child = f"{path}.{field.encode_name}" if path else field.encode_name
        nested = _struct_in(field.type)
        if nested is not None and isinstance(value, dict):
            return explain(value, nested, child)
        item = _struct_in(_list_item(field.type))
        if item is not None and isinstance(value, list) and value:
            return _explain_items(value, item, f"{child}[]")
        rule = cls.RULES.get(field.name)
        return rule(value) if rule is not None else object_message(child)
    raise AssertionError(f"{cls.__name__} refused but no field explains it")  # pragma: no cover


def _struct_in(annotation: object) -> type[Request] | None:
    """The request struct ``annotation`` names (also as ``X | None``), if any."""
    candidates = get_args(annotation) if isinstance(annotation, UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Request):
            return candidate
    return None


def _list_item(annotation: object) -> object:
    """The item type of ``list[X]`` or ``Annotated[list[X], ...]`` (None for other types)."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _list_item(args[0])
    return args[0] if get_origin(annotation) is list and args else None


def _explain_items(items: list[object], item_type: type[Request], path: str) -> str:
    """Why a list of structs was refused: its first bad element."""
    for item in items:
        try:
            msgspec.convert(item, item_type)
        except msgspec.ValidationError:
            return explain(item, item_type, path)
    raise AssertionError(f"no element of {path} explains the refusal")  # pragma: no cover
