"""Strict, frozen pydantic models and error messages that name the failing key.

Every JSON artefact we read back (fingerprint.json, plans.json, plan templates) is a
``StrictModel``: unknown keys, missing keys and wrong types are errors, never coerced.
``load_json_model`` turns a pydantic ValidationError into one ``PlansError`` whose
message names each failing key path, e.g.
``configurations.3d_fullres.networks.umamba_bot.patch_size: expected list of int, got '40x56x40'``.
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medmamba.errors import PlansError


class StrictModel(BaseModel):
    """Base of every persisted object: frozen, no extra keys, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


M = TypeVar("M", bound=StrictModel)


def _describe(annotation: Any) -> str:
    """Human wording of a type annotation: 'list of int', 'object', 'one of ct, zscore'."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is int:
        return "int"
    if annotation is float:
        return "number"
    if annotation is str:
        return "string"
    if annotation is bool:
        return "true/false"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return "list of " + (_describe(inner[0]) if inner else "values")
    if origin is dict:
        return f"object of {_describe(args[1])}" if args else "object"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    return getattr(annotation, "__name__", str(annotation))


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation of the value at ``loc`` inside ``model`` (None if not resolvable)."""
    current: Any = model
    for part in loc:
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif origin in (tuple, list):
            args = [a for a in typing.get_args(current) if a is not Ellipsis]
            current = args[0] if len(args) == 1 else (
                args[part] if isinstance(part, int) and part < len(args) else None)
        elif origin in (typing.Union, types.UnionType):
            # Follow the first non-None branch that knows the next key.
            options = [a for a in typing.get_args(current) if a is not type(None)]
            current = options[0] if options else None
            return _annotation_at(current, (part,)) if current is not None else None
        else:
            return None
    return current


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def format_validation_error(model: type[BaseModel], error: ValidationError) -> str:
    """All problems of ``error`` as '; '-joined 'key.path: problem' phrases."""
    messages: list[str] = []
    for item in error.errors(include_url=False):
        # Union branches and function validators add non-key entries to loc.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and (
            "[" in p or p.startswith("function-"))))
        kind = item["type"]
        path = _path(loc)
        if kind == "extra_forbidden":
            messages.append(f"{path}: unknown key")
        elif kind == "missing":
            messages.append(f"{path}: missing key")
        elif kind == "value_error":
            messages.append(f"{path}: {str(item['msg']).removeprefix('Value error, ')}")
        else:
            annotation = _annotation_at(model, loc)
            expected = _describe(annotation) if annotation is not None else item["msg"]
            messages.append(f"{path}: expected {expected}, got {item.get('input')!r}")
    unique = list(dict.fromkeys(messages))
    return "; ".join(unique)


def validate_json_model(model: type[M], text: str | bytes, source: Path | str | None) -> M:
    """Parse and validate JSON text as ``model``; raises PlansError naming the bad keys."""
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise PlansError(f"not valid JSON ({error.errors()[0]['msg']})", source) from None
        raise PlansError(format_validation_error(model, error), source) from None


def load_json_model(model: type[M], path: Path) -> M:
    """Read ``path`` and validate it as ``model`` (PlansError if missing or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise PlansError("file not found", path)
    return validate_json_model(model, path.read_bytes(), path)
