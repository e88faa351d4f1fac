"""The command ``pipekit import jenkinsfile``, which checks its own result before it says anything.

The converted pipeline.py must compile, parse with Python 3.10's grammar (the lowest pipekit
supports) and load and validate as ``pipekit validate`` loads it. A result that does not is an
error of the importer, never the user's: exit 3, with what is wrong and where, and the file
written beside as ``pipeline.py.rejected`` for a bug report.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pipekit._ci.jenkins.convert import convert
from pipekit._ci.jenkins.emit import check_source
from pipekit._ci.jenkins.parse import ParseError
from pipekit._ci.jenkins.steps import identifier

__all__ = ["check", "convert_file"]


def check(text: str) -> str | None:
    """None when pipeline.py ``text`` is valid Python 3.10 and a valid pipeline; else what is wrong."""
    import pipekit as pk
    from pipekit._plan.graph import find_errors
    from pipekit.exceptions import PipekitError

    problem = check_source(text)
    if problem is not None:
        return f"it is not valid Python 3.10: {problem}"
    with tempfile.TemporaryDirectory(prefix="pipekit-import-") as folder:
        path = Path(folder) / "pipeline.py"
        path.write_text(text, encoding="utf-8")
        try:
            pipeline = pk.load(path)
            errors = find_errors(pipeline)
        except (PipekitError, Exception) as e:  # noqa: BLE001 - whatever the file raises, it is the importer's bug
            return f"it does not load: {type(e).__name__}: {str(e).replace(folder, '.')}"
    if errors:
        return "it does not validate: " + "; ".join(str(e).replace(folder, ".") for e in errors)
    return _lost(text, len(pipeline.stages), len(pipeline.params))


def _lost(text: str, stages: int, params: int) -> str | None:
    """Whether a stage or parameter written in ``text`` is missing from the loaded pipeline (a
    name that hides another)."""
    tree = ast.parse(text)
    written = sum(
        1
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d).startswith("pk.stage") for d in node.decorator_list)
    )
    declared = sum(
        1
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "pk.param"
    )
    if (written, declared) != (stages, params):
        return f"it loses parts: {written} stages and {declared} parameters written, {stages} and {params} loaded"
    return None


def convert_file(path: Path, output: Path | None, *, force: bool, out: IO[str], err: IO[str]) -> int:
    """The command: 0 when the conversion is complete, 1 when parts need hands, 2 when the
    Jenkinsfile cannot be read, 3 when the importer made a file that is not valid (its bug)."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"pipekit: cannot read {path}: {getattr(e, 'strerror', None) or e}", file=err)
        return 2
    if output is not None and output.exists() and not force:
        print(f"pipekit: {output} exists; pipekit leaves it as it is (--force replaces it)", file=err)
        return 2
    try:
        result = convert(source, identifier(path.resolve().parent.name or "pipeline").replace("_", "-"))
    except ParseError as e:
        print(f"pipekit: {path}: {e}", file=err)
        return 2
    except RecursionError:
        print(f"pipekit: {path}: blocks nested too deep to convert", file=err)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug of the importer: said as such, with no traceback
        print(f"pipekit: internal error of the importer on {path}: {type(e).__name__}: {e}", file=err)
        return 3
    text = result.text
    problem = check(text)
    if problem is not None:
        rejected = (output.parent if output is not None else Path.cwd()) / "pipeline.py.rejected"
        kept = f"the result is in {rejected} for a bug report" if _write(rejected, text, err) else "nor kept"
        print(
            f"pipekit: internal error of the importer: the pipeline.py it made from {path} is wrong: {problem}."
            f" Nothing was written as pipeline.py; {kept}.",
            file=err,
        )
        return 3
    if output is None:
        out.write(text)
    elif _write(output, text, err):
        print(f"wrote {output}", file=err)
    else:
        return 2
    _report(result.todos, path, err)
    return 1 if result.todos else 0


def _write(target: Path, text: str, err: IO[str]) -> bool:
    from pipekit._core.util import write_file

    try:
        if not target.parent.is_dir():  # -o names a folder that is not there: said, not made
            raise FileNotFoundError(2, "No such file or directory", str(target.parent))
        write_file(target, text)  # never through a link left at the target, replaced atomically
    except OSError as e:
        print(f"pipekit: cannot write {target}: {e.strerror or e}", file=err)
        return False
    return True


def _report(todos: Sequence[tuple[int, str]], path: Path, err: IO[str]) -> None:
    if not todos:
        print(f"{path}: converted completely", file=err)
        return
    print(f"{path}: {len(todos)} part(s) need converting by hand (marked TODO in the result):", file=err)
    for line, text in sorted(todos):
        print(f"  line {line}: {text}", file=err)
