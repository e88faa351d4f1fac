"""Shell completion that knows the pipeline and the history, in real shells (bash, zsh, fish) with the
installed `pipekit` console script (the timing is in benchmarks/bench_completion.py)."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import console_env, console_script, run_console

PIPELINE = """\
import pipekit as pk

REGISTRY = pk.param("registry", default="localhost:5000")
pk.param("deploy_target", default="staging")


@pk.stage
def lint(ctx):
    ctx.sh("true")


@pk.stage(name="unit-tests", image="busybox:1.36", needs=[lint], services=[pk.Service("db", image="postgres:16")])
def unit(ctx):
    ctx.sh("true")


for _n in ("a", "b"):  # stages made in a loop: completion knows them from the last run
    globals()[f"gen_{_n}"] = pk.stage(name=f"gen-{_n}")(lambda ctx: None)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline with a recorded run (host stages: no engine needed) and the completion scripts."""
    folder = tmp_path_factory.mktemp("completion")
    (folder / "pipeline.py").write_text(PIPELINE)
    done = run_console(["run", "lint", "gen-a", "gen-b", "--no-image-check"], cwd=folder, env=_env(folder))
    assert done.returncode == 0, done.stderr
    for shell in ("bash", "zsh", "fish"):
        done = run_console(["completion", shell], cwd=folder, env=_env(folder))
        assert done.returncode == 0, done.stderr
        (folder / f"pipekit.{shell}").write_text(done.stdout)
    return folder


def _env(folder: Path) -> dict[str, str]:
    """The console script's folder first on the PATH (the shells run `pipekit`), a cache of its own."""
    path = f"{Path(console_script()).parent}{os.pathsep}{os.environ['PATH']}"
    return console_env(PATH=path, XDG_CACHE_HOME=str(folder / ".cache"), HOME=str(folder))


def _run_id(folder: Path) -> str:
    done = run_console(["runs"], cwd=folder, env=_env(folder))
    return done.stdout.splitlines()[1].split()[0]


def bash_complete(folder: Path, line: str) -> list[str]:
    """What bash's completion function (from `pipekit completion bash`) offers for ``line``."""
    words = line.split(" ")
    script = (
        f"source pipekit.bash; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1};"
        ' _pipekit_completion pipekit; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", script], cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_stages_runs_params_and_images(project: Path) -> None:
    assert bash_complete(project, "pipekit ru") == ["run", "runs"]
    # from pipeline.py's syntax (nothing of it runs), then the last run's loop-made stages
    assert bash_complete(project, "pipekit run ") == ["lint", "unit-tests", "gen-a", "gen-b"]
    assert bash_complete(project, "pipekit plan u") == ["unit-tests"]
    assert bash_complete(project, "pipekit run lint g") == ["gen-a", "gen-b"]
    run_id = _run_id(project)
    for command in ("show", "logs", "report", "shell", "cleanup", "artifacts", "approve"):
        assert bash_complete(project, f"pipekit {command} ") == ["last", run_id], command
    assert bash_complete(project, f"pipekit show {run_id[:3]}") == [run_id]
    assert bash_complete(project, "pipekit graph --run ") == ["last", run_id]
    assert bash_complete(project, "pipekit logs last ") == ["lint", "unit-tests", "gen-a", "gen-b"]
    assert bash_complete(project, f"pipekit approve {run_id} u") == ["unit-tests"]
    assert bash_complete(project, "pipekit run -p ") == ["registry=", "deploy_target="]
    assert bash_complete(project, "pipekit plan --param d") == ["deploy_target="]
    assert bash_complete(project, "pipekit run --image-map ") == ["busybox:1.36=", "postgres:16="]
    assert "--fail-fast" in bash_complete(project, "pipekit run --fail")
    assert bash_complete(project, "pipekit run -f ") == []  # bash completes file names itself (-o default)


def test_completion_reads_the_pipeline_given_with_f(project: Path, tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "pipeline.py").write_text("import pipekit as pk\n@pk.stage\ndef package(ctx):\n    pass\n")
    shutil.copy(project / "pipekit.bash", tmp_path)
    assert bash_complete(tmp_path, "pipekit run -f ci ") == ["package"]
    assert bash_complete(tmp_path, "pipekit run ") == []  # no pipeline.py here, no history: nothing
    assert bash_complete(tmp_path, "pipekit show ") == ["last"]


def test_completion_never_offers_shell_syntax(project: Path, tmp_path: Path) -> None:
    """A stage name a hostile plan.json (or pipeline.py) holds is not typed into the command line."""
    (tmp_path / "pipeline.py").write_text(
        'import pipekit as pk\n@pk.stage(name="x$(touch pwned)")\ndef a(ctx):\n    pass\n'
        '@pk.stage(name="ok")\ndef b(ctx):\n    pass\n'
    )
    shutil.copy(project / "pipekit.bash", tmp_path)
    assert bash_complete(tmp_path, "pipekit run ") == ["ok"]
    assert not (tmp_path / "pwned").exists()


class _Shell:
    """An interactive shell on a pseudo-terminal: type a line, press TAB, see what the line became."""

    def __init__(self, argv: list[str], folder: Path, setup: str) -> None:
        import pty

        master, slave = pty.openpty()
        env = {**_env(folder), "TERM": "dumb", "PS1": "$ ", "PROMPT": "$ "}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=folder, env=env, start_new_session=True
        )
        os.close(slave)
        self.fd = master
        self.type(setup + "\r")
        self.type("echo READY\r")
        self.until(b"\r\nREADY")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def settle(self, quiet: float) -> None:
        """Read until nothing came for ``quiet`` seconds."""
        while select.select([self.fd], [], [], quiet)[0]:
            os.read(self.fd, 65536)

    def until(self, marker: bytes, timeout: float = 30) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{marker!r} did not come; the terminal shows {seen!r}")
            seen += os.read(self.fd, 65536)
        return seen

    def completed(self, line: str, word: str) -> str:
        """The command line after typing ``line``, TAB (waiting until the shell inserted the rest of
        ``word``) and "Z" (which shows whether a space came after it)."""
        self.type(line)
        self.settle(0.5)  # the typed line's echo
        self.type("\t")
        self.until(word[len(line.rsplit(" ", 1)[-1]) :].encode(), timeout=30)  # (slow on a busy machine)
        self.settle(0.3)
        self.type("Z\x01echo :\r")  # a letter where the cursor is, then Ctrl-A "echo :": the line, printed
        out = self.until(b"Z\r\n").decode(errors="replace")
        return out[out.rindex("\n:") + 2 : out.rindex("Z") + 1]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.fd)


@pytest.mark.parametrize(
    "argv,setup",
    [
        (["bash", "--norc", "--noprofile", "-i"], "source pipekit.bash"),
        (["zsh", "-f", "-i"], "autoload -U compinit && compinit -u && source pipekit.zsh"),
        # as docs/cli.md installs it: a file _pipekit in a folder of $fpath, autoloaded by compinit
        (
            ["zsh", "-f", "-i"],
            "mkdir -p zfunc && cp pipekit.zsh zfunc/_pipekit && fpath=(zfunc $fpath)"
            " && autoload -U compinit && compinit -u",
        ),
    ],
    ids=["bash", "zsh", "zsh-fpath"],
)
def test_tab_on_a_terminal(project: Path, argv: list[str], setup: str) -> None:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (scripts/setup.sh installs it)")
    shell = _Shell(argv, project, setup)
    try:
        assert shell.completed("pipekit run li", "lint") == "pipekit run lint Z"
        assert shell.completed("pipekit run -p reg", "registry=") == "pipekit run -p registry=Z"  # no space: a value
        assert shell.completed("pipekit show la", "last") == "pipekit show last Z"
        assert shell.completed("pipekit pl", "plan") == "pipekit plan Z"
    finally:
        shell.close()


def test_fish_completes(project: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed (scripts/setup.sh installs it)")
    script = (
        "source pipekit.fish; complete -C'pipekit run '; echo ---; complete -C'pipekit show '; echo ---;"
        " complete -C'pipekit run -p '"
    )
    done = subprocess.run(
        ["fish", "--no-config", "-c", script], cwd=project, env=_env(project), capture_output=True, text=True
    )
    assert done.stderr == "", done.stderr
    stages, runs, params = (part.strip().splitlines() for part in done.stdout.split("---"))
    assert sorted(stages) == ["gen-a\tstage", "gen-b\tstage", "lint\tstage", "unit-tests\tstage"]
    assert len(runs) == 2 and "last\tthe last run" in runs  # (fish sorts them)
    assert any(r.startswith(f"{_run_id(project)}\tsucceeded ") for r in runs), runs
    assert sorted(params) == ["deploy_target=\tparameter", "registry=\tparameter"]


def test_a_tab_starts_no_engine_and_imports_no_docker(project: Path) -> None:
    """The completion process imports neither the docker SDK nor the run machinery (warm cache)."""
    env = {**_env(project), "_PIPEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "pipekit run ", "COMP_CWORD": "2"}
    env["DOCKER_HOST"] = "tcp://127.0.0.1:9"  # an engine that would not answer
    probe = (
        "import runpy, sys; sys.argv = ['pipekit']\n"
        "try:\n    runpy.run_module('pipekit', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('LOADED', ' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'structlog')"
        " or m.startswith('pipekit._run'))))"
    )
    for _ in range(2):  # the first may describe the CLI into the cache
        done = subprocess.run(["python3", "-c", probe], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "plain,lint" in done.stdout
    assert done.stdout.splitlines()[-1].strip() == "LOADED", done.stdout


def test_the_cached_description_follows_the_real_command_line(project: Path) -> None:
    """The JSON a TAB rebuilds the commands from describes every command and option of the real CLI."""
    from pipekit._cli.complete import _rebuild, describe
    from pipekit._cli.main import cli

    again = _rebuild("pipekit", describe(cli))
    assert describe(again) == describe(cli)


def test_the_description_is_kept_once(project: Path, tmp_path: Path) -> None:
    """The first TAB describes the command line into the cache; an earlier pipekit's file goes."""
    shutil.copy(project / "pipekit.bash", tmp_path)
    kept = tmp_path / ".cache" / "pipekit"
    kept.mkdir(parents=True)
    (kept / "cli-0123456789abcdef0123.json").write_text("{}")
    assert bash_complete(tmp_path, "pipekit ru") == ["run", "runs"]
    (found,) = kept.glob("cli-*.json")
    assert found.name != "cli-0123456789abcdef0123.json" and '"run"' in found.read_text()


def test_fish_loads_the_file_docs_cli_md_installs(project: Path, tmp_path: Path) -> None:
    """~/.config/fish/completions/pipekit.fish, autoloaded by fish on the first TAB."""
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed (scripts/setup.sh installs it)")
    folder = tmp_path / ".config" / "fish" / "completions"
    folder.mkdir(parents=True)
    shutil.copy(project / "pipekit.fish", folder / "pipekit.fish")
    env = {**_env(project), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    done = subprocess.run(
        ["fish", "-c", "complete -C'pipekit run li'"], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.stdout == "lint\tstage\n", done.stdout + done.stderr
