"""``icd-pipeline``: the project's command-line tool, for what users run by hand.

    icd-pipeline run --cores 2 all [SNAKEMAKE ARGS ...]   the workflow (config files checked first)
    icd-pipeline predict --model M --images DIR --out DIR  segment a folder of photographs
    icd-pipeline export --model M --format onnx --out F    a self-contained ONNX / TorchScript model
    icd-pipeline config show [--configfile F] [--changed]  the resolved configuration, with origins
    icd-pipeline report --experiment results/<dataset>/<experiment>   its report.html and summary
    icd-pipeline compare --results results/<dataset> ...   every finished experiment side by side
    icd-pipeline score --data-root D --split S --pred-dir P ...  score any folder of masks
    icd-pipeline saliency-model [--model isnet-medium]     fetch the saliency network (make saliency-model)
    icd-pipeline benchmark [ARGS ...]                      benchmarks/run_benchmark.py

``icd-pipeline <command> --help`` describes each. The Snakemake rules call the stage modules
(``python -m icd_pipeline.stages.<stage>``) directly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .config import ConfigError, format_resolved, load_yaml, parse_cli_config, resolve_workflow_config
from .misc.commands import TOOL

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGFILE_OPTIONS = ("--configfile", "--configfiles")

# subcommand -> (stage module whose main() it runs, one-line help)
STAGE_COMMANDS = {
    "predict": ("icd_pipeline.stages.predict", "segment a folder of images with a trained DeepLab"),
    "export": ("icd_pipeline.stages.export", "export a trained DeepLab as ONNX or TorchScript"),
    "report": ("icd_pipeline.stages.summarize", "(re)build an experiment's report.html and summary"),
    "compare": ("icd_pipeline.stages.compare", "one table of every finished experiment of a dataset"),
    "score": ("icd_pipeline.stages.score", "score a folder of masks against a split's ground truth"),
    "saliency-model": ("icd_pipeline.stages.fetch_saliency_model",
                       "fetch a salient-object network (ISNet) into the cache, sha256-checked"),
}
OWN_COMMANDS = {
    "run": "run the Snakemake workflow (its --configfile files are checked first)",
    "config": "show the configuration the workflow resolves (config show)",
    "benchmark": "run benchmarks/run_benchmark.py (quality, speed and cost of the pipeline)",
}


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


RUN_HELP = """usage: icd-pipeline run [SNAKEMAKE ARGUMENTS ...]

Run the workflow: `snakemake ARGUMENTS` with this interpreter, e.g.

    icd-pipeline run --cores 2 all
    icd-pipeline run --cores 2 all --configfile workflow/presets/voc2012_sample.yaml \\
        --config 'dataset={root: /path/to/photos}'

Snakemake 9 reads --configfile files itself, before the workflow runs, and reports a YAML
syntax error only as "Config file is not valid JSON or YAML" (no file, no line). This reads
each of them first and stops with FILE:LINE:COLUMN: YAML syntax error: ... (exit status 1);
when they all parse, it replaces itself by `python -m snakemake ARGUMENTS`, so the exit
status and output are Snakemake's own. Run it from the clone (where the Snakefile is), or
pass --snakefile and --directory.
"""


def run_workflow(args: list[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        print(RUN_HELP.strip())
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


def config_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{TOOL} config",
        description="Show the configuration exactly as the workflow resolves it, each leaf with its origin.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the resolved config (YAML, origins as comments)")
    show.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="FILE",
                      help="as snakemake --configfile (after config.yaml, in order)")
    show.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                      help="as snakemake --config, e.g. 'icd={epochs: 2}' seed=1")
    show.add_argument("--replace-workflow-config", action="store_true",
                      help="as snakemake's flag: config.yaml is not read")
    show.add_argument("--changed", action="store_true",
                      help="only the leaves whose value differs from the schema defaults (the paper's recipe)")
    ns = parser.parse_args(args)
    try:
        config, origins = resolve_workflow_config(ns.configfile, parse_cli_config(ns.config),
                                                  use_default=not ns.replace_workflow_config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_resolved(config, origins, changed_only=ns.changed), end="")
    return 0


def benchmark_command(args: list[str]) -> int:
    script = REPO_ROOT / "benchmarks" / "run_benchmark.py"
    if not script.is_file():
        print(f"error: {script} not found: the benchmarks ship with the repository, not with an installed "
              f"package; run from a clone (pip install -e .)", file=sys.stderr)
        return 2
    cmd = [sys.executable, str(script), *args]
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


def usage() -> str:
    width = max(map(len, list(STAGE_COMMANDS) + list(OWN_COMMANDS)))
    lines = [f"usage: {TOOL} <command> [ARGS ...]", "", __doc__.split("\n\n")[0].split(": ", 1)[1], "",
             "commands:"]
    for name, text in [*OWN_COMMANDS.items(), *((n, h) for n, (_, h) in STAGE_COMMANDS.items())]:
        lines.append(f"  {name:<{width}}  {text}")
    lines += ["", f"`{TOOL} <command> --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"{TOOL} {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "run":
        return run_workflow(rest)
    if command == "config":
        return config_command(rest)
    if command == "benchmark":
        return benchmark_command(rest)
    if command in STAGE_COMMANDS:
        module = importlib.import_module(STAGE_COMMANDS[command][0])
        sys.argv = [f"{TOOL} {command}", *rest]  # the stage's --help and errors name this command
        return module.main(rest)
    print(f"{TOOL}: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
