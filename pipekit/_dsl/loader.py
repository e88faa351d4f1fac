"""Import a pipeline.py and collect its stages (``pk.load``)."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from pipekit._core.util import gc_paused
from pipekit._dsl.params import Param
from pipekit._dsl.secrets import Secret
from pipekit._dsl.stage import MODULE_REGISTRY, POST_REGISTRY, Pipeline, Stage
from pipekit.exceptions import PipelineError, PipelineLoadError

__all__ = ["load", "pipeline_from_module"]

_counter = itertools.count()


def _user_traceback(exc: BaseException, path: Path) -> str:
    """The traceback of an import failure, trimmed to frames in the user's files."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen") and not _is_pipekit_file(f.filename)
    ]
    out = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    out.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(out)


_PIPEKIT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_pipekit_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PIPEKIT_DIR + os.sep)


@contextlib.contextmanager
def _exit_is_an_error() -> Iterator[None]:
    """While a pipeline file imports, ``os._exit`` raises SystemExit instead of ending pipekit
    with a false exit code."""
    real = os._exit

    def refuse(status: int) -> NoReturn:
        raise SystemExit(status)

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real


def _text(e: BaseException) -> str:
    """An exception's message, even when its __str__ raises."""
    try:
        return str(e)
    except Exception as inner:
        return f"(its message could not be shown: {type(inner).__name__} in __str__)"


def load(path: str | os.PathLike[str] = "pipeline.py") -> Pipeline:
    """Import a pipeline file and return its :class:`Pipeline`.

    The file's folder is put on ``sys.path`` while it imports, so it can import helper modules
    that sit beside it.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "pipeline.py"
    file = file.resolve()
    if not file.is_file():
        raise PipelineLoadError(
            f"No pipeline file at {file}. Create a pipeline.py or point at one with -f PATH.",
            path=str(file),
        )
    module_name = f"_pipekit_pipeline_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"Cannot import {file}: it is not a Python file", path=str(file))
    module = importlib.util.module_from_spec(spec)
    folder = str(file.parent)
    sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        with _exit_is_an_error(), gc_paused():
            spec.loader.exec_module(module)
    except PipelineError:
        raise
    except SystemExit as e:
        raise PipelineLoadError(
            f"Could not import {file}: it called sys.exit({e.code!r}) (or os._exit) while being imported."
            " A pipeline file defines stages; it does not end the program",
            path=str(file),
            traceback=_user_traceback(e, file),
        ) from None
    except Exception as e:
        tb = _user_traceback(e, file)
        raise PipelineLoadError(
            f"Could not import {file}: {type(e).__name__}: {_text(e)}", path=str(file), traceback=tb
        ) from e
    finally:
        sys.modules.pop(module_name, None)
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    pipeline = pipeline_from_module(module, path=str(file))
    pipeline.secret_names |= _secret_literals(file)
    return pipeline


_SECRET_CALL = re.compile(
    r"""\bsecret\(\s*(?:name\s*=\s*)?["']([A-Za-z_][A-Za-z0-9_]*)["'](?!\s*,\s*mask\s*=\s*False)"""
)


def _secret_literals(file: Path) -> set[str]:
    """The names of every ``pk.secret("NAME")`` / ``ctx.secret("NAME")`` written in the file, so
    that their values are masked from the run's first line, before a stage looks them up."""
    try:
        return set(_SECRET_CALL.findall(file.read_text()))
    except (OSError, ValueError):
        return set()


def pipeline_from_module(module: ModuleType, *, path: str | None = None) -> Pipeline:
    """Collect the stages of an imported module into a :class:`Pipeline`.

    Stages are those decorated in the module (in definition order) and any other stage objects
    the module holds as globals.  If the module defines one ``pk.Pipeline``, that pipeline gets the
    module's bare stages too and gives them its defaults.
    """
    namespace = vars(module)
    pipelines = [v for v in namespace.values() if isinstance(v, Pipeline)]
    unique_pipelines = list({id(p): p for p in pipelines}.values())
    if len(unique_pipelines) > 1:
        names = ", ".join(repr(p.name) for p in unique_pipelines)
        raise PipelineError(
            f"{path or module.__name__} defines {len(unique_pipelines)} pipelines ({names});"
            " define one pk.Pipeline per file"
        )
    pipeline = unique_pipelines[0] if unique_pipelines else Pipeline(name=_default_name(path))
    if pipeline.path is None:
        pipeline.path = path
    decorated: list[Stage] = list(namespace.get(MODULE_REGISTRY, ()))
    held = [v for v in namespace.values() if isinstance(v, Stage)]
    for s in itertools.chain(decorated, held):
        pipeline.add(s)
    for hook in namespace.get(POST_REGISTRY, ()):
        pipeline.add_post(hook)
    for value in namespace.values():
        if isinstance(value, Param):
            known = pipeline.params.get(value.name)
            if known is not None and known != value:
                raise PipelineError(
                    f"{path or module.__name__} declares the parameter '{value.name}' twice; declare it once"
                )
            pipeline.params[value.name] = value
        elif isinstance(value, Secret) and value.mask:
            pipeline.secret_names.add(value.name)
    return pipeline


def _default_name(path: str | None) -> str:
    if not path:
        return "pipeline"
    p = Path(path)
    return p.parent.name if p.stem == "pipeline" and p.parent.name else p.stem
