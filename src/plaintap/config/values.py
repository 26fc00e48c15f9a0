"""Values that come from outside the file: value sources and `{{ ENV_VAR }}` endpoints.

Secrets such as API keys are written as value sources, `{type: env, value: VAR}` or
`{type: text, value: "..."}`, and read only when a sink needs them
(`resolve_value_source`), so a file can be validated where the secrets are not set.
Endpoints may contain `{{ VAR }}`; those are substituted when the file is loaded, and an
unset variable is a configuration problem then.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, OneOf, problems_from_validation_error

__all__ = ["ValueSource", "resolve_value_source", "substitute_env", "UnsetVariables", "ENV_PLACEHOLDER"]

ENV_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ValueSource(BaseModel):
    """`{type: env, value: VAR}` reads the environment variable VAR; `{type: text}` is literal."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    type: Annotated[Literal["env", "text"], OneOf()]
    value: str


def resolve_value_source(
    source: ValueSource | Mapping[str, Any],
    *,
    where: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The text a value source stands for, read now.

    `where` is the key path the value source sits at, used in the message. Raises
    ConfigError when the source is malformed or names an unset environment variable.
    """
    if not isinstance(source, ValueSource):
        try:
            source = ValueSource.model_validate(source)
        except ValidationError as err:
            lines = problems_from_validation_error(err, source)
            raise ConfigError([f"{where}.{line}" if where else line for line in lines]) from None
    if source.type == "text":
        return source.value
    environment = os.environ if env is None else env
    if source.value not in environment:
        used_by = f" (needed by {where})" if where else ""
        raise ConfigError([f"environment variable {source.value} is not set{used_by}"])
    return environment[source.value]


class UnsetVariables(LookupError):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `{{ VAR }}` replaced by VAR's value; raises UnsetVariables."""
    unset = [name for name in ENV_PLACEHOLDER.findall(text) if name not in env]
    if unset:
        raise UnsetVariables(sorted(set(unset)))
    return ENV_PLACEHOLDER.sub(lambda match: env[match.group(1)], text)
