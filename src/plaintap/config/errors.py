"""Configuration problems as one line each, with the key path that holds them.

A bad `qtap.yaml` must tell the user exactly where it is wrong
(`stacks.capture.plugins[0].config.levle: unknown key`), in one line per problem and
without pydantic's wording or links. The models raise pydantic errors; this module
turns them into those lines:

* `loc` tuples become key paths. A discriminated union adds its tag (`'otel'`) to the
  location although the document has no such key, so the path is walked through the
  document itself and such tags are dropped.
* The models' own checks raise `problem(message, field=...)`; `field` extends the path
  when a check on a whole section is about one key of it (`...secret_key: required ...`).
* `OneOf` makes a `Literal[...]` field say which values it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, get_args

from pydantic import GetCoreSchemaHandler, ValidationError
from pydantic_core import PydanticCustomError, core_schema

__all__ = ["ConfigError", "OneOf", "problem", "problems_from_validation_error", "describe", "show"]

_PROBLEM = "plaintap_problem"


class ConfigError(Exception):
    """An unusable configuration. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        where = f" in {self.source}" if self.source else ""
        return f"{len(self.problems)} problems{where}:\n" + "\n".join(f"  {line}" for line in self.problems)


def problem(message: str, field: str | None = None) -> PydanticCustomError:
    """An error for a model check to raise; `field` names the key (or `[i].key`) it is about."""
    context: dict[str, Any] = {"message": message}
    if field is not None:
        context["field"] = field
    return PydanticCustomError(_PROBLEM, "{message}", context)


class OneOf:
    """`Annotated[Literal["a", "b"], ONE_OF]`: a wrong value is reported with the choices."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        allowed = get_args(source)
        listed = ", ".join(str(value) for value in allowed)

        def check(value: Any) -> Any:
            if isinstance(value, str) and value in allowed:
                return value
            raise problem(f"{show(value)} is not one of {listed}")

        return core_schema.no_info_before_validator_function(check, handler(source))


def show(value: object) -> str:
    """A value as the user wrote it, for messages."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return describe(value)


def describe(value: object) -> str:
    """What kind of YAML value this is, for 'expected X, got Y' messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (date, datetime)):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
}


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == _PROBLEM:
        return str(context["message"])
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        loc = error.get("loc") or ()
        guess = closest_key(str(loc[-1])) if loc else None
        return f"unknown key (did you mean '{guess}'?)" if guess else "unknown key"
    if kind in _EXPECTED:
        given = error.get("input")
        hint = ""
        if kind == "string_type" and isinstance(given, bool):
            hint = " (YAML reads unquoted yes/no/on/off as true/false: quote it)"
        return f"expected {_EXPECTED[kind]}, got {describe(given)}{hint}"
    if kind == "literal_error":
        return f"{show(error.get('input'))} is not allowed (expected {context.get('expected', '?')})"
    message = str(error.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


_KNOWN_KEYS: list[str] | None = None


def _known_keys() -> list[str]:
    """Every key any config model accepts (field names and their aliases)."""
    global _KNOWN_KEYS
    if _KNOWN_KEYS is None:
        from pydantic import AliasChoices, BaseModel

        from . import model
        keys: set[str] = set()
        for obj in vars(model).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
                for name, info in obj.model_fields.items():
                    keys.add(info.alias or name)
                    alias = info.validation_alias
                    if isinstance(alias, str):
                        keys.add(alias)
                    elif isinstance(alias, AliasChoices):
                        keys.update(c for c in alias.choices if isinstance(c, str))
        _KNOWN_KEYS = sorted(k for k in keys if not k.startswith("_"))
    return _KNOWN_KEYS


def closest_key(key: str) -> str | None:
    """The known config key `key` is most likely a typo of (`levle` → `level`), or None."""
    import difflib
    found = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.75)
    return found[0] if found and found[0] != key else None


def key_path(loc: Sequence[int | str], document: object) -> str:
    """`('stacks', 'x', 'plugins', 0, 'http_capture', 'config')` → `stacks.x.plugins[0].config`."""
    path = ""
    node: object = document
    for key in loc:
        if isinstance(key, int):
            path += f"[{key}]"
            node = node[key] if isinstance(node, list) and -len(node) <= key < len(node) else None
        elif key == "[key]":
            path += " (the key)"
            node = None
        elif isinstance(node, dict) and key not in node and node.get("type") == key:
            continue  # the tag a discriminated union adds; not a key of the document
        else:
            path += f".{key}" if path else str(key)
            node = node.get(key) if isinstance(node, dict) else None
    return path


def _extend(path: str, field: str | None) -> str:
    if not field:
        return path
    if field.startswith("[") or not path:
        return path + field
    return f"{path}.{field}"


def problems_from_validation_error(err: ValidationError, document: object) -> list[str]:
    """One line per error, `<key path>: <message>`, duplicates removed, order kept."""
    lines: list[str] = []
    for error in err.errors(include_url=False):
        field = (error.get("ctx") or {}).get("field") if error["type"] == _PROBLEM else None
        path = _extend(key_path(error["loc"], document), field)
        message = _message(error)
        line = f"{path}: {message}" if path else message
        if line not in lines:
            lines.append(line)
    return lines
