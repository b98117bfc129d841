"""Configuration: one sectioned YAML validated by ``workflow/schemas/config.schema.yaml``.

Entry points take either ``--config FILE`` (a YAML file, e.g. ``config.yaml``; repeatable,
later files override earlier ones section by section) or ``--config-json JSON`` (what the
Snakemake rules pass: only the sections a stage reads, so that changing another section
does not rerun it). Both are validated with defaults filled in; an unknown key or a wrong
type fails with a message naming the key.

Layers. The schema's defaults are the paper's recipe (``../shared/specs/icd-method.md``);
``config.yaml`` is the embedded CPU run, each departure commented where it is made; presets
and the command line override it. A file whose top level says ``base: paper`` starts again
from the schema defaults: every layer before it (``config.yaml`` included) is dropped, so a
preset that claims the paper's recipe gets it whatever ``config.yaml`` holds.
:func:`resolve_layers` is the one merge; the workflow (``workflow/rules/common.smk``, via
:func:`resolve_workflow_config`) and ``icd-pipeline config show`` both call it::

    icd-pipeline config show [--configfile F ...] [--config KEY=VALUE ...] [--changed]

prints the resolved configuration as YAML, each leaf with its origin (schema default,
config.yaml, a preset file, command line).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
_PACKAGED_SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


class ConfigError(ValueError):
    """Invalid configuration; the message names the key."""


REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGFILE = REPO_ROOT / "config.yaml"
SCHEMA_ORIGIN = "schema default (paper)"
CLI_ORIGIN = "command line"
BASE_KEY = "base"  # layer directive, not a config key: `base: paper` drops earlier layers
BASES = ("paper", "inherit")
# dataset.name when it is null: the source's own name, or the folder's name (source folder)
DEFAULT_DATASET_NAMES = {"synthetic": "embedded", "voc2012": "voc2012", "coco2014": "coco2014"}


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
        if "null" in types and config in ("null", "Null", "NULL", "~"):
            return None  # YAML's null, also where a string is allowed (dataset.name: null)
        if "string" in types or not types:
            return config
        try:
            parsed = yaml.safe_load(config)
        except yaml.YAMLError:
            return config
        if isinstance(parsed, list):
            return coerce_cli_strings(parsed, schema)
        if isinstance(parsed, str) and "number" in types:
            try:  # YAML 1.1 reads 1e-5 (no dot) as a string
                return float(parsed)
            except ValueError:
                return config
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


def _leaves(tree: dict, prefix: tuple = ()):
    """(path, value) of every leaf: a value that is not a non-empty mapping."""
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, dict) and value:
            yield from _leaves(value, path)
        else:
            yield path, value


def _get(tree: dict, path: tuple):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def resolve_layers(layers: list[tuple[str, dict]]) -> tuple[dict, dict[str, str]]:
    """Merge config layers, lowest precedence first, into the validated configuration.

    ``layers``: (origin, mapping) pairs, e.g. ``("config.yaml", {...})``. Mappings merge key by
    key (a later layer's leaf wins). A layer with top-level ``base: paper`` drops every layer
    before it, so the result starts from the schema defaults, which are the paper's values.
    Returns (config with defaults filled, {dotted leaf path: origin}); a leaf no layer set has
    the origin :data:`SCHEMA_ORIGIN`. The one merge the workflow and ``show`` share.
    """
    start = 0
    for i, (origin, layer) in enumerate(layers):
        base = layer.get(BASE_KEY, "inherit")
        if base not in BASES:
            raise ConfigError(f"{origin}: invalid key {BASE_KEY}: {base!r} is not one of {list(BASES)}")
        if base == "paper":
            start = i
    config: dict[str, Any] = {}
    set_by: dict[tuple, str] = {}
    source = "config"
    for origin, layer in layers[start:]:
        layer = {k: v for k, v in layer.items() if k != BASE_KEY}
        config = deep_merge(config, layer)
        for path, value in _leaves(layer):
            if value == {} and _get(config, path) != {}:
                continue  # merging {} changes nothing (as in Snakemake): not this layer's value
            # a leaf replaces whatever was below it (e.g. a mapping set to null)
            for old in [p for p in set_by if p[:len(path)] == path]:
                del set_by[old]
            set_by[path] = origin
        source = origin
    validate(config, source)
    derived = resolve_dataset_name(config)
    if derived:
        set_by[("dataset", "name")] = derived
    origins = {".".join(path): set_by.get(path, SCHEMA_ORIGIN) for path, _ in _leaves(config)}
    return config, origins


def default_dataset_name(dataset: dict) -> str | None:
    """The name ``dataset.name: null`` stands for: ``embedded``, ``voc2012`` or ``coco2014`` for
    those sources; for ``source: folder`` the name of the folder ``dataset.root`` (characters
    other than letters, digits, ``.``, ``_``, ``-`` replaced by ``_``), None while root is unset.
    Results go to ``results/<name>/``."""
    source = dataset.get("source", "synthetic")
    if source != "folder":
        return DEFAULT_DATASET_NAMES[source]
    root = dataset.get("root")
    if not root:
        return None
    base = os.path.basename(os.path.normpath(os.path.abspath(os.path.expanduser(str(root)))))
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    if name in ("", ".", ".."):
        return "dataset"
    return "_" + name[1:] if name.startswith(".") else name


def resolve_dataset_name(config: dict) -> str | None:
    """Fill a null ``dataset.name`` (in place) with :func:`default_dataset_name`; return the
    origin to show for it, or None when nothing was filled (set by a layer, or not derivable:
    source folder without root, which the workflow refuses)."""
    dataset = config["dataset"]
    if dataset.get("name") is not None:
        return None
    name = default_dataset_name(dataset)
    if name is None:
        return None
    dataset["name"] = name
    if dataset["source"] == "folder":
        return "derived: the folder name of dataset.root"
    return f"derived: the default of dataset.source {dataset['source']}"


def file_layer(path: str | Path, label: str | None = None) -> tuple[str, dict]:
    """A config file as a layer; its origin is ``label``, else the path relative to the current
    folder when inside it, else the absolute path. Not relative to the workflow's folder: the
    origins are a rule param (resolved_config), and the same files run from another copy of
    the workflow must not rerun it."""
    path = Path(path)
    if label is None:
        absolute = Path(os.path.abspath(path))
        try:
            label = str(absolute.relative_to(Path(os.getcwd())))
        except ValueError:
            label = str(absolute)
    return label, load_yaml(path)


def cli_layer(cli_config) -> tuple[str, dict]:
    """Snakemake's parsed ``--config`` (nested values arrive as strings) as a typed layer."""
    def plain(value):
        if hasattr(value, "items"):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return CLI_ORIGIN, coerce_cli_strings(plain(cli_config or {}))


def resolve_workflow_config(configfiles=(), cli_config=None, default_configfile=DEFAULT_CONFIGFILE,
                            use_default: bool = True) -> tuple[dict, dict[str, str]]:
    """What Snakemake's config becomes: the Snakefile's ``configfile:`` (config.yaml, origin
    ``config.yaml`` wherever the workflow lies, unless
    ``use_default`` is False, i.e. ``--replace-workflow-config``), then each ``--configfile``
    in order, then ``--config`` (Snakemake 9 merges them in that order too, then our
    ``base: paper`` and schema defaults apply)."""
    layers = [file_layer(default_configfile, "config.yaml")] if use_default and default_configfile else []
    layers += [file_layer(f) for f in configfiles]
    layers.append(cli_layer(cli_config))
    return resolve_layers(layers)


def load_config(paths: list[str | Path] | None = None, json_text: str | None = None) -> dict:
    layers = [file_layer(p) for p in paths or []]
    if json_text:
        try:
            data = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc})") from exc
        layers.append(("--config-json", data))
    return resolve_layers(layers)[0]


def _flow(value) -> str:
    """One value as a YAML flow scalar/sequence that yaml.safe_load reads back identically."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def format_resolved(config: dict, origins: dict[str, str], changed_only: bool = False) -> str:
    """The resolved config as YAML, each leaf followed by ``# <origin>``. ``base: paper`` on top,
    so the text used as a --configfile reproduces the run whatever config.yaml holds.
    ``changed_only``: only the leaves whose value differs from the schema default (the paper)."""
    lines = ["base: paper   # the schema defaults are the paper's values; the leaves below override nothing else"
             if changed_only else
             "base: paper   # every leaf is listed: the schema defaults below are the paper's values"]
    width = max((len(k) for k in origins), default=0)
    defaults = dict(_leaves(validate({})))

    def walk(tree: dict, prefix: str, indent: int) -> list[str]:
        out = []
        for key, value in tree.items():
            path = f"{prefix}{key}"
            pad = "  " * indent
            if isinstance(value, dict) and value:
                body = walk(value, path + ".", indent + 1)
                if body:
                    out.append(f"{pad}{key}:")
                    out.extend(body)
                continue
            origin = origins.get(path, SCHEMA_ORIGIN)
            if changed_only and defaults.get(tuple(path.split("."))) == value and \
                    tuple(path.split(".")) in defaults:
                continue
            text = f"{pad}{key}: {_flow(value)}"
            out.append(f"{text:<{width + 12}}  # {origin}")
        return out

    lines.extend(walk(config, "", 0))
    return "\n".join(lines) + "\n"


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


def parse_cli_config(entries: list[str]) -> dict:
    """KEY=VALUE arguments parsed as Snakemake parses --config (its own parser when installed)."""
    if not entries:
        return {}
    try:
        from snakemake.cli import parse_config
    except ImportError:  # the package without Snakemake: YAML values, as Snakemake's fallback
        out: dict = {}
        for entry in entries:
            key, sep, value = entry.partition("=")
            if not sep:
                raise ConfigError(f"--config {entry!r}: expected KEY=VALUE")
            out = deep_merge(out, {key: yaml.safe_load(value) if value else None})
        return out
    return parse_config(entries)

