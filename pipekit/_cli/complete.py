"""Shell completion (bash, zsh, fish) that knows the pipeline and the history, answered fast.

The shell runs ``pipekit`` with ``_PIPEKIT_COMPLETE`` set on every TAB. Importing the whole command
line costs about half a second (the run machinery behind its commands), so a TAB does not: the
commands and their options are described once from the real click tree and kept as JSON in the
user's cache folder (``$XDG_CACHE_HOME/pipekit/``, renewed when pipekit or its ``_cli`` files
change), and a TAB rebuilds a bare click tree from it with click alone. Values come from the
pipeline's syntax tree (:mod:`pipekit._dsl.outline`: nothing of pipeline.py runs) and the history
read-only (:mod:`pipekit._history.peek`); no engine is asked, docker is not imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import BashComplete, CompletionItem, FishComplete, ZshComplete, add_completion_class

__all__ = ["VALUES", "complete", "describe"]

#: what the value of a parameter completes with: (command, parameter) → kind; "*" is any command.
#: A new command whose argument is a run id joins with one line, ("approve", "run"): "run".
VALUES: dict[tuple[str, str], str] = {
    ("run", "stages"): "stage",
    ("plan", "stages"): "stage",
    ("graph", "stages"): "stage",
    ("logs", "stage"): "stage",
    ("shell", "stage"): "stage",
    ("approve", "stage"): "stage",
    ("show", "run"): "run",
    ("logs", "run"): "run",
    ("report", "run"): "run",
    ("shell", "run"): "run",
    ("cleanup", "run"): "run",
    ("artifacts", "run"): "run",
    ("graph", "run"): "run",
    ("approve", "run"): "run",
    ("*", "resume"): "run",
    ("*", "param"): "param",
    ("*", "image_map"): "image",
    ("*", "file"): "file",
}

FORMAT = 1  # of the cached description
#: what a completion may offer: a name from pipeline.py or the history never brings shell syntax
#: ($, `, ;, quotes, spaces, globs) into the command line being typed
_SAFE = re.compile(r"[\w.,:/@+=%\[\]-]+")


# -- the command tree, described and rebuilt ------------------------------------------------------


def _param(p: click.Parameter) -> dict[str, Any]:
    choices = list(p.type.choices) if isinstance(p.type, click.Choice) else None  # type: ignore[attr-defined]
    entry: dict[str, Any] = {"name": p.name, "opts": p.opts, "nargs": p.nargs, "multiple": p.multiple}
    entry["choices"] = [str(c) for c in choices] if choices is not None else None
    if isinstance(p, click.Option):
        entry.update(kind="option", secondary=p.secondary_opts, flag=p.is_flag, count=p.count, help=p.help or "")
        entry["optional_value"] = bool(getattr(p, "_flag_needs_value", False))
    else:
        entry.update(kind="argument", required=p.required)
    return entry


def describe(command: click.Command) -> dict[str, Any]:
    """The commands, options and arguments of ``command`` (and below), as JSON-ready values."""
    entry: dict[str, Any] = {"help": command.get_short_help_str(80), "params": [_param(p) for p in command.params]}
    if isinstance(command, click.Group):
        entry["commands"] = {name: describe(sub) for name, sub in command.commands.items() if not sub.hidden}
    return entry


def _rebuild_param(command: str, p: dict[str, Any]) -> click.Parameter:
    kind = VALUES.get((command, p["name"])) or VALUES.get(("*", p["name"]))
    extra: dict[str, Any] = {"shell_complete": _completer(kind)} if kind else {}
    ptype = click.Choice(p["choices"]) if p["choices"] is not None else None
    if p["kind"] == "argument":
        return click.Argument(p["opts"], nargs=p["nargs"], required=p["required"], type=ptype, **extra)
    pairs = [f"{a}/{b}" for a, b in zip(p["opts"], p["secondary"])]  # --x/--no-x
    decls = [p["name"], *pairs, *p["opts"][len(pairs) :]]
    if p["flag"]:
        return click.Option(decls, is_flag=True, help=p["help"], multiple=p["multiple"])
    if p["count"]:
        return click.Option(decls, count=True, help=p["help"])
    if p["optional_value"]:
        return click.Option(decls, is_flag=False, flag_value="", help=p["help"], type=ptype, **extra)
    return click.Option(decls, nargs=p["nargs"], multiple=p["multiple"], help=p["help"], type=ptype, **extra)


def _rebuild(name: str, entry: dict[str, Any]) -> click.Command:
    settings = {"help_option_names": ["-h", "--help"]}
    params = [_rebuild_param(name, p) for p in entry["params"]]
    if "commands" in entry:
        group = click.Group(name, params=params, help=entry["help"], context_settings=settings)
        for sub, value in entry["commands"].items():
            group.add_command(_rebuild(sub, value))
        return group
    return click.Command(name, params=params, help=entry["help"], context_settings=settings)


def _key() -> str:
    """What the description depends on: pipekit's version and its command line's files."""
    from pipekit import __version__

    folder = Path(__file__).parent
    stats = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(folder) if e.is_file())
    text = json.dumps([FORMAT, __version__, str(folder), stats])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipekit" / f"cli-{_key()}.json"


def _described(real: Callable[[], click.Command]) -> dict[str, Any]:
    """The description of the whole ``pipekit`` command: from the cache, else made from ``real()``
    (and kept)."""
    path = _cache_file()
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "params" in data:
            return data
    data = describe(real())  # the slow way, once per pipekit version
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
        for old in path.parent.glob("cli-*.json"):  # (an earlier pipekit's)
            if old != path:
                old.unlink()
    return data


# -- the values -----------------------------------------------------------------------------------


def _pipeline_file(ctx: click.Context) -> Path:
    root = ctx.find_root()
    given = ctx.params.get("file") or root.params.get("file") or os.environ.get("PIPEKIT_FILE") or "pipeline.py"
    path = Path(str(given))
    return (path / "pipeline.py" if path.is_dir() else path).absolute()


def _values(kind: str, ctx: click.Context) -> list[tuple[str, str]]:
    from pipekit._dsl.outline import outline
    from pipekit._history.peek import last_stages, recent_runs

    file = _pipeline_file(ctx)
    if kind == "run":
        return [("last", "the last run"), *recent_runs(file.parent)]
    found = outline(file)
    if kind == "stage":
        names = list(found.stages)
        names += [s for s in last_stages(file.parent, file.resolve()) if s not in found.stages]
        return [(n, "stage") for n in names]
    if kind == "param":
        return [(f"{n}=", "parameter") for n in found.params]
    return [(f"{n}=", "image") for n in found.images]  # image: --image-map IMAGE=LOCAL


def _completer(kind: str | None) -> Any:
    def complete_value(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        if kind == "file":
            return [CompletionItem(incomplete, type="file")]
        try:
            values = _values(str(kind), ctx)
        except Exception:  # a TAB never prints a traceback into the command line
            return []
        return [
            CompletionItem(value, help=help)
            for value, help in values
            if value.startswith(incomplete) and _SAFE.fullmatch(value)
        ]

    return complete_value


# -- the shells -----------------------------------------------------------------------------------


class _Bash(BashComplete):
    """click's bash script, with no space after a value that ends in ``=`` (``-p registry=``)."""

    source_template = BashComplete.source_template.replace(
        "    return 0\n}",
        "    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]]; then\n"
        "        compopt -o nospace\n    fi\n\n    return 0\n}",
        1,
    )


class _Zsh(ZshComplete):
    """click's zsh script, with no space after a value that ends in ``=``; and installed as a file
    of ``$fpath`` (``_pipekit``), its second TAB completes too: zsh runs the file's body as
    ``_pipekit`` on every TAB until compdef names the function, and click's script only registers
    it then (so the second TAB of a session did nothing)."""

    source_template = (
        ZshComplete.source_template.replace(
            "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
            "if [[ $zsh_eval_context[-1] == loadautofunc || $funcstack[1] == _%(prog_name)s ]]; then",
            1,
        )
        .replace(
            '                completions+=("$key")',
            '                if [[ "$key" == *= ]]; then compadd -S "" -U -V unsorted -- "$key";'
            ' else completions+=("$key"); fi',
            1,
        )
        .replace(
            '                completions_with_descriptions+=("$key":"$descr")',
            '                if [[ "$key" == *= ]]; then compadd -S "" -U -V unsorted -- "$key";'
            ' else completions_with_descriptions+=("$key":"$descr"); fi',
            1,
        )
    )


class _Fish(FishComplete):
    """A fish script that works: click 8.4's splits each answer on a newline fish has already split
    on (every completion fails with "string split: missing argument"); here one answer is one line,
    ``TYPE,VALUE<tab>HELP``."""

    source_template = r"""function %(complete_func)s;
    set -l response (env %(complete_var)s=fish_complete COMP_WORDS=(commandline -cp) \
COMP_CWORD=(commandline -t) %(prog_name)s);
    for completion in $response;
        set -l metadata (string split -m 1 , -- $completion);
        if test "$metadata[1]" = dir;
            __fish_complete_directories $metadata[2];
        else if test "$metadata[1]" = file;
            __fish_complete_path $metadata[2];
        else if test "$metadata[1]" = plain;
            echo $metadata[2];
        end;
    end;
end;

complete --no-files --command %(prog_name)s --arguments "(%(complete_func)s)";
"""

    def format_completion(self, item: CompletionItem) -> str:
        value = " ".join(item.value.split())
        return f"{item.type},{value}\t{' '.join(item.help.split())}" if item.help else f"{item.type},{value}"


add_completion_class(_Bash, "bash")
add_completion_class(_Zsh, "zsh")
add_completion_class(_Fish, "fish")


def complete(real: Callable[[], click.Command]) -> int:
    """Answer the shell (``_PIPEKIT_COMPLETE=bash_complete`` and friends); the exit code. ``real``
    gives the real command tree (slow to import: only for the script, or when the cache misses)."""
    from click.shell_completion import shell_complete

    instruction = os.environ.get("_PIPEKIT_COMPLETE", "")
    if instruction.endswith("_source"):  # the script: from the real tree, as `pipekit completion` does
        return shell_complete(real(), {}, "pipekit", "_PIPEKIT_COMPLETE", instruction)
    return shell_complete(_rebuild("pipekit", _described(real)), {}, "pipekit", "_PIPEKIT_COMPLETE", instruction)
