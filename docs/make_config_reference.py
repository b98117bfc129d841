#!/usr/bin/env python
"""Write docs/configuration-reference.md from the config schema, config.yaml and the presets.

    .venv/bin/python docs/make_config_reference.py          # rewrite the file
    .venv/bin/python docs/make_config_reference.py --check  # exit 1 if the file is stale

One table per config section: every key the schema knows, its type, the paper's value (the
schema default: the authors' recipe), the value of the embedded default run (config.yaml) and of
the real-photograph preset (voc2012_sample) where they differ, and the reasons written beside
the key in the schema, config.yaml and the presets (each departure from the paper carries the
figure that chose it there). tests/test_docs.py fails when the file is not what this writes, so
the reference cannot drift from the files it is read from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icd_pipeline.config import file_layer, resolve_layers  # noqa: E402

OUT = ROOT / "docs" / "configuration-reference.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SOURCES = {  # column -> file whose comments explain its values
    "config.yaml": ROOT / "config.yaml",
    "voc2012_sample": ROOT / "workflow" / "presets" / "voc2012_sample.yaml",
    "voc2012": ROOT / "workflow" / "presets" / "voc2012.yaml",
    "coco2014": ROOT / "workflow" / "presets" / "coco2014.yaml",
}
KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+):(.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """{dotted key: its comments}: the trailing comment of the key's line with the comment
    lines under it (aligned with it, or indented deeper than a child key would be: a long key
    pushes its comment right of the file's comment column), and a comment block right above
    the key."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last, last_col, last_indent = None, None, 0
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            above, last = [], None
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if last is not None and last_col is not None and (indent >= last_col - 1 or indent > last_indent + 2):
                out[last] = f"{out[last]} {text}".strip()
            else:
                above.append(text)
                last = None
            continue
        match = KEY_LINE.match(line)
        if not match:
            above, last = [], None
            continue
        key, rest = match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        comment, col = "", None
        if " #" in rest:
            col = len(line) - len(rest) + rest.index(" #") + 1
            comment = rest[rest.index(" #") + 2:].strip()
        text = " ".join([*above, comment]).strip()
        if text:
            out[dotted] = text
        above, last, last_col, last_indent = [], (dotted if comment else None), col, indent
    return out


def schema_keys(schema: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, schema node) for every leaf (and every object's own entry), in file order."""
    out = []
    for key, node in (schema.get("properties") or {}).items():
        dotted = f"{prefix}{key}"
        if node.get("type") == "object" and node.get("properties"):
            out.extend(schema_keys(node, dotted + "."))
        else:
            out.append((dotted, node))
    return out


def type_text(node: dict) -> str:
    if "enum" in node:
        return " | ".join(str(v) for v in node["enum"])
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array" and isinstance(node.get("items"), dict):
        kind = f"list of {node['items'].get('type', 'any')}"
    return str(kind)


def value_text(value) -> str:
    if value is _MISSING:
        return ""
    return "`" + json.dumps(value, separators=(", ", ": ")) + "`"


_MISSING = object()


def get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def build() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    comments = {name: yaml_comments(path) for name, path in SOURCES.items()}
    comments["schema"] = yaml_comments(SCHEMA)
    paper, _ = resolve_layers([])
    embedded, _ = resolve_layers([file_layer(SOURCES["config.yaml"])])
    sample, _ = resolve_layers([file_layer(SOURCES["config.yaml"]), file_layer(SOURCES["voc2012_sample"])])
    lines = ["# Configuration reference", "",
             "Generated by `docs/make_config_reference.py` from `workflow/schemas/config.schema.yaml`, "
             "`config.yaml` and `workflow/presets/`; do not edit by hand (`tests/test_docs.py` checks it). "
             "How the layers merge and how to set a key: [configuration.md](configuration.md).", "",
             "Columns: **paper** is the schema default, the authors' recipe (DeepLab: the spec's proxy); "
             "**embedded** is `config.yaml`, the default CPU run, shown where it departs from the paper; "
             "**photos** is `config.yaml` + `workflow/presets/voc2012_sample.yaml` (real photographs, "
             "bring your own), shown where it departs from the embedded run. **Why** is what the files say "
             "beside the key (the figure that chose a departure, with the split it was measured on).", ""]
    section = None
    for dotted, node in schema_keys(schema):
        top = dotted.split(".")[0] if "." in dotted else "(top level)"
        if top != section:
            if section is not None:
                lines.append("")
            section = top
            lines += [f"## `{section}`" if section != "(top level)" else "## Top level", "",
                      "| key | type | paper | embedded | photos | why |", "|---|---|---|---|---|---|"]
        p, e, s = get(paper, dotted), get(embedded, dotted), get(sample, dotted)
        why = []
        for name in ("schema", "config.yaml", "voc2012_sample", "voc2012", "coco2014"):
            text = comments[name].get(dotted)
            if text:
                why.append(text if name == "schema" else f"{name}: {text}")
        if node.get("description"):
            why.insert(0, node["description"])
        lines.append("| " + " | ".join([
            f"`{dotted}`", cell(type_text(node)), cell(value_text(p)),
            cell(value_text(e) if e != p else ""), cell(value_text(s) if s != e else ""),
            cell(" / ".join(dict.fromkeys(why)))]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run .venv/bin/python docs/make_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
