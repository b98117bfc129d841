"""Configuration: one sectioned YAML validated by ``workflow/schemas/config.schema.yaml``.

Entry points take either ``--config FILE`` (a YAML file, e.g. ``config.yaml``; repeatable,
later files override earlier ones section by section) or ``--config-json JSON`` (what the
Snakemake rules pass: only the sections a stage reads, so that changing another section
does not rerun it). Both are validated with defaults filled in; an unknown key or a wrong
type fails with a message naming the key.
"""

from __future__ import annotations

import argparse
import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
_PACKAGED_SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


@lru_cache(maxsize=1)
def load_schema() -> dict:
    path = SCHEMA_PATH if SCHEMA_PATH.is_file() else _PACKAGED_SCHEMA
    return yaml.safe_load(path.read_text())


def _extend_with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = [k for k in error.instance if k not in error.schema.get("properties", {})]
        parts.extend(extra[:1])
        return ".".join(parts) + " (unknown key)"
    return ".".join(parts) or "<top level>"


def validate(config: dict, source: str = "config") -> dict:
    """Validate and fill defaults in place; return the config."""
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ConfigError(f"{source}: invalid key {_key_path(err)}: {err.message}")
    return config


def coerce_cli_strings(config, schema: dict | None = None):
    """Snakemake's ``--config key={...}`` parses nested values as strings ('5', 'true');
    turn them into the types the schema asks for (in place; returns the config). A value
    that does not parse is left as it is, for validation to name."""
    schema = load_schema() if schema is None else schema
    if isinstance(config, dict):
        props = schema.get("properties", {})
        for key, value in config.items():
            if key in props:
                config[key] = coerce_cli_strings(value, props[key])
        return config
    if isinstance(config, list):
        items = schema.get("items", {})
        return [coerce_cli_strings(v, items) for v in config]
    if isinstance(config, str):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "string" in types or not types:
            return config
        try:
            parsed = yaml.safe_load(config)
        except yaml.YAMLError:
            return config
        if isinstance(parsed, list):
            return coerce_cli_strings(parsed, schema)
        return parsed
    return config


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def yaml_error_message(path: str | Path, exc: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN: YAML syntax error: PROBLEM (CONTEXT at line L, column C)``, 1-based,
    the position where the parser found the problem (editors and terminals jump to it)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:  # e.g. a ReaderError (bytes that are not UTF-8): no line to point at
        return f"{path}: not valid YAML ({exc})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    problem = getattr(exc, "problem", None) or "syntax error"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    extra = f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})" if context and cmark else ""
    tabs = "; YAML indents with spaces, not tabs" if "\\t" in problem else ""
    return f"{where}: YAML syntax error: {problem}{extra}{tabs}"


def load_yaml(path: str | Path) -> dict:
    """Read one config file: a missing file, a YAML syntax error (named FILE:LINE:COLUMN) or a
    top level that is not a mapping raise ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(paths: list[str | Path] | None = None, json_text: str | None = None) -> dict:
    config: dict[str, Any] = {}
    source = "config"
    for p in paths or []:
        config = deep_merge(config, load_yaml(p))
        source = str(p)
    if json_text:
        try:
            data = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc})") from exc
        config = deep_merge(config, data)
        source = "--config-json" if not paths else source
    return validate(config, source)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="config file (repeatable; later files override earlier ones)")
    parser.add_argument("--config-json", default=None, metavar="JSON",
                        help="config sections as JSON (what the Snakemake rules pass)")


def config_from_args(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.config_json)


def section_json(config: dict, *sections: str) -> str:
    """The named top-level sections as compact, key-sorted JSON (a stable rule param)."""
    return json.dumps({s: config[s] for s in sections if s in config}, sort_keys=True, separators=(",", ":"))
