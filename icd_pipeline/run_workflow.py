"""Run Snakemake after checking the config files given to it with ``--configfile``.

    python -m icd_pipeline.run_workflow [SNAKEMAKE ARGUMENTS ...]
    e.g. python -m icd_pipeline.run_workflow --cores 2 all --configfile my_preset.yaml

Snakemake 9 reads ``--configfile`` files itself, before the Snakefile runs, and reports a YAML
syntax error only as "Config file is not valid JSON or YAML" (no file, no line; ``--verbose``
prints the parser's traceback). This reads each of those files first and, on an error, stops
with ``FILE:LINE:COLUMN: YAML syntax error: ...`` (exit status 1); when they all parse, it
replaces itself by ``python -m snakemake ARGUMENTS`` with the same interpreter, so the exit
status and output are Snakemake's own.
"""

from __future__ import annotations

import os
import sys

from .config import ConfigError, load_yaml

CONFIGFILE_OPTIONS = ("--configfile", "--configfiles")


def configfiles(args: list[str]) -> list[str]:
    """The files named by ``--configfile`` / ``--configfiles`` in Snakemake arguments. Like
    Snakemake's argparse (nargs="+"), an option takes every following argument up to the next
    one that starts with '-'; ``--configfile=FILE`` takes one."""
    files: list[str] = []
    taking = False
    for arg in args:
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            taking = name in CONFIGFILE_OPTIONS and not eq
            if name in CONFIGFILE_OPTIONS and eq:
                files.append(value)
        elif taking:
            files.append(arg)
    return files


def check_configfiles(args: list[str]) -> list[str]:
    """One message per config file that is missing, not YAML or not a mapping (empty: all fine)."""
    errors = []
    for path in configfiles(args):
        try:
            load_yaml(path)
        except ConfigError as exc:
            errors.append(str(exc))
    return errors


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    errors = check_configfiles(args)
    if errors:
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "snakemake", *args]
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
