"""plaintap's configuration: a typed, checked `qtap.yaml`.

plaintap reads the same configuration file as Qpoint's qtap. This package turns that
file into a `Config` (pydantic models, defaults in `model.py`), reporting every problem
as one line with its key path (`ConfigError.problems`), and compiles the rule
expressions it contains (`rules.py`).

    cfg = load_config("qtap.yaml")          # or an http(s):// URL
    cfg = load_config_text(text, source="<name>")
    cfg = default_config()                  # qtap's built-in default
    problems = validate_file("qtap.yaml")   # [] when valid
"""

from .errors import ConfigError
from .loader import (check_file, config_from_document, config_warnings, default_config, load_config, load_config_text,
                     validate_file)
from .model import Config
from .rules import Rule, RuleSyntaxError, compile_expr
from .sizes import parse_size
from .values import ValueSource, resolve_value_source

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "load_config_text",
    "config_from_document",
    "default_config",
    "parse_size",
    "validate_file",
    "check_file",
    "config_warnings",
    "resolve_value_source",
    "ValueSource",
    "Rule",
    "RuleSyntaxError",
    "compile_expr",
]
