"""Threat model: a container stage is hostile, and what it leaves in the workspace must not reach the host.

Each test runs the installed ``pipekit`` console script (this checkout first on PYTHONPATH) against
the real engine, in both workspace modes where the attack applies: ``mount`` (the folder is bind
mounted) and ``copy`` (what a remote engine or a swarm node gets: copied in, changes brought back).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
ROOT = Path(__file__).parent.parent.parent
MODES = ["mount", "copy"]
GIT = ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.com"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


def _pipekit_args(folder: Path, busybox_image: str, mode: str, *args: str) -> list[str]:
    exe = shutil.which("pipekit")
    assert exe is not None, "the pipekit console script is not installed"
    return [exe, "run", "--progress", "plain", "--workspace", mode, "--image-map", f"busybox={busybox_image}", *args]


def _pipekit(folder: Path, busybox_image: str, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _pipekit_args(folder, busybox_image, mode, *args),
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(tmp_path: Path, pipeline: str) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text("import pipekit as pk\n\n" + textwrap.dedent(pipeline))
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's sha256, a link's target, ``/`` for a folder."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            seen[rel] = "->" + os.readlink(path)
        elif path.is_dir():
            seen[rel] = "/"
        else:
            seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def _git_repo(folder: Path) -> None:
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "README").write_text("a project\n")
    subprocess.run([*GIT, "-C", str(folder), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(folder), "commit", "-qm", "first"], check=True)


GIT_ATTACK = """
@pk.stage(image="busybox")
def plant(ctx):
    mark = "{mark}"
    hook = "#!/bin/sh\\ntouch " + mark + "\\n"
    tries = [
        f"printf '{{hook}}' > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout",
        f"printf '{{hook}}' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit",
        "printf '[core]\\\\n\\\\thooksPath = evil-hooks\\\\n\\\\tfsmonitor = touch {mark}\\\\n' >> .git/config",
        f"mkdir -p evil-hooks && printf '{{hook}}' > evil-hooks/pre-commit && chmod +x evil-hooks/pre-commit",
        "mkdir -p vendor/.git && printf '[core]\\\\n\\\\tfsmonitor = touch {mark}\\\\n' > vendor/.git/config",
    ]
    return [ctx.sh(t, check=False).exit_code for t in tries]
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_stage_cannot_plant_git_hooks_or_config(tmp_path: Path, busybox_image: str, mode: str) -> None:
    """A stage that writes .git/hooks/* and core.hooksPath/core.fsmonitor in .git/config changes
    nothing of the host's .git, and the developer's next git commands run none of it."""
    mark = tmp_path / "hook-ran"
    folder = _folder(tmp_path, GIT_ATTACK.format(mark=mark))
    _git_repo(folder)
    before = _snapshot(folder / ".git")
    done = _pipekit(folder, busybox_image, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _snapshot(folder / ".git") == before
    if mode == "copy":  # a .git anywhere in the tree never comes back
        assert not (folder / "vendor" / ".git").exists()
    subprocess.run([*GIT, "-C", str(folder), "status", "--short"], check=True, capture_output=True)
    subprocess.run([*GIT, "-C", str(folder), "checkout", "-qb", "other"], check=True)
    subprocess.run([*GIT, "-C", str(folder), "commit", "-q", "--allow-empty", "-m", "next"], check=True)
    assert not mark.exists(), "a hook or the fsmonitor a stage planted ran on the host"


NEW_REPO = """
@pk.stage(image="busybox")
def make_repo(ctx):
    ctx.sh("mkdir -p .git/objects .git/refs && echo 'ref: refs/heads/main' > .git/HEAD")
    ctx.sh("printf '[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = touch {mark}\\n' > .git/config")
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_stage_cannot_make_a_repository_where_there_was_none(tmp_path: Path, busybox_image: str, mode: str) -> None:
    """The pipeline's folder is a subfolder of a repository (no .git of its own): a stage that makes
    one there (with an fsmonitor) leaves none behind; in mount mode the stage fails saying so."""
    mark = tmp_path / "fsmonitor-ran"
    folder = _folder(tmp_path, NEW_REPO.format(mark=mark))
    _git_repo(tmp_path)
    done = _pipekit(folder, busybox_image, mode)
    if mode == "mount":
        assert done.returncode == 1, done.stdout + done.stderr
        assert "made a .git in the workspace" in done.stdout + done.stderr
    else:
        assert done.returncode == 0, done.stdout + done.stderr
    assert not (folder / ".git").exists()
    subprocess.run([*GIT, "-C", str(folder), "status", "--short"], check=True, capture_output=True)
    assert not mark.exists(), "the fsmonitor a stage planted ran on the host"


PIPEKIT_ATTACK = """
@pk.stage(image="busybox")
def link(ctx):
    ctx.sh("echo genuine > report.txt")
    ctx.archive("report.txt")
    ctx.sh("ln -s .pipekit x && ln -s .pipekit/logs y")


@pk.stage(image="busybox")
def write(ctx, link):
    ctx.sh("rm -f x y && mkdir -p x/logs x/artifacts y && echo forged > x/forged.txt && echo forged > x/pipekit.db")
    ctx.sh("echo forged > y/forged.log && echo forged > x/logs/forged.log")
    ctx.sh("echo forged > x/artifacts/$(sha256sum report.txt | cut -d' ' -f1)")
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_link_to_pipekit_then_a_folder_cannot_write_into_pipekit(
    tmp_path: Path, busybox_image: str, mode: str
) -> None:
    """One stage links x -> .pipekit, the next replaces x by a folder and writes files there: none
    of them reaches .pipekit/ (its history database still reads)."""
    folder = _folder(tmp_path, PIPEKIT_ATTACK)
    done = _pipekit(folder, busybox_image, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    state = folder / ".pipekit"
    assert not [p for p in state.rglob("*") if "forged" in p.name]
    assert (state / "pipekit.db").read_bytes()[:15] == b"SQLite format 3"
    artifact = state / "artifacts" / hashlib.sha256(b"genuine\n").hexdigest()
    assert artifact.read_bytes() == b"genuine\n"  # what `pipekit artifacts` hands out
    assert not (folder / "x").is_symlink() and not (folder / "y").is_symlink()
    shown = subprocess.run(
        [shutil.which("pipekit") or "pipekit", "runs"], cwd=folder, env=_env(), capture_output=True, text=True
    )
    assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stdout + shown.stderr


CHAIN_ATTACK = """
@pk.stage(image="busybox")
def chain(ctx):
    ctx.sh("ln -s . d && ln -s d/.. l1 && ln -s l1/victim.txt v && ln -s d/d/../victim.txt w")
    ctx.sh("ln -s /etc/hostname abs && mkdir -p sub && ln -s ../../victim.txt sub/up")


@pk.stage(image="busybox")
def write(ctx, chain):
    ctx.sh("echo pwned > v; echo pwned > w; echo pwned > sub/up; true")
    ctx.sh("rm -f l1 && mkdir l1 && echo pwned > l1/victim.txt")
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_chain_of_links_cannot_reach_a_host_file(tmp_path: Path, busybox_image: str, mode: str) -> None:
    """Links that each look inside (d -> ., l1 -> d/.., v -> l1/victim.txt) end outside the
    workspace: the host file they lead to is never written, and in copy mode no link that leads
    out of the workspace (resolved on the real tree) is brought back."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = _folder(tmp_path, CHAIN_ATTACK)
    done = _pipekit(folder, busybox_image, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    assert victim.read_text() == "precious\n"
    if mode == "copy":
        real = os.path.realpath(folder)
        for path in folder.rglob("*"):
            if path.is_symlink():
                resolved = os.path.realpath(path)
                assert resolved == real or resolved.startswith(real + os.sep), f"{path} -> {resolved}"
        assert (folder / "d").is_symlink()  # a link that stays inside comes back
        assert (folder / "l1" / "victim.txt").read_text() == "pwned\n"  # the stage's folder, not the host file


SHAPES = """
@pk.stage(image="busybox")
def reshape(ctx):
    ctx.sh("rm build && mkdir build && echo inside > build/out")
    ctx.sh("rm -r dist && echo now-a-file > dist")
    ctx.sh("ln -f a.txt b.txt && cp -al tree tree-copy && echo changed > store-linked.js")


@pk.stage(image="busybox")
def check(ctx, reshape):
    ctx.sh("cat build/out dist b.txt tree-copy/leaf y.txt")
"""


@pytest.mark.parametrize("mode", MODES)
def test_files_that_change_shape_and_hard_links(tmp_path: Path, busybox_image: str, mode: str) -> None:
    """A file that became a folder and a folder that became a file come back as such; hard-linked
    files (ln, cp -al, a pnpm-like store outside the workspace) are neither deleted nor written
    through on the host."""
    folder = _folder(tmp_path, SHAPES)
    (folder / "build").write_text("a file\n")
    (folder / "dist").mkdir()
    (folder / "dist" / "old.whl").write_text("old\n")
    (folder / "a.txt").write_text("a\n")
    (folder / "b.txt").write_text("b\n")
    (folder / "tree").mkdir()
    (folder / "tree" / "leaf").write_text("leaf\n")
    (folder / "x.txt").write_text("linked\n")
    os.link(folder / "x.txt", folder / "y.txt")  # cp -al on the host
    store = tmp_path / "store.js"
    store.write_text("the store\n")
    os.link(store, folder / "store-linked.js")  # pnpm: the workspace's file is the store's
    done = _pipekit(folder, busybox_image, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (folder / "build" / "out").read_text() == "inside\n"
    assert (folder / "dist").read_text() == "now-a-file\n"
    assert (folder / "b.txt").read_text() == "a\n" and (folder / "a.txt").read_text() == "a\n"
    assert (folder / "tree-copy" / "leaf").read_text() == "leaf\n"
    assert (folder / "y.txt").read_text() == "linked\n" and (folder / "x.txt").read_text() == "linked\n"
    assert (folder / "store-linked.js").read_text() == "changed\n"
    if mode == "copy":  # (a bind mount writes the same inode: mount mode shares the store, as on the host)
        assert store.read_text() == "the store\n"


def test_a_large_sparse_file_comes_back_in_flat_memory(tmp_path: Path, busybox_image: str) -> None:
    """A 1 GiB sparse file a stage makes comes back (copy mode) without the pipekit process's
    memory growing with it, and stays sparse on the host."""
    folder = _folder(
        tmp_path,
        """
        @pk.stage(image="busybox")
        def big(ctx):
            ctx.sh("truncate -s 1G big.img && echo tail >> big.img")
        """,
    )
    proc = subprocess.Popen(
        _pipekit_args(folder, busybox_image, "copy"),
        cwd=folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        output = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, output
    peak_mib = usage.ru_maxrss / 1024
    assert peak_mib < 200, f"pipekit's peak memory was {peak_mib:.0f} MiB for a 1 GiB file"
    big = folder / "big.img"
    assert big.stat().st_size == (1 << 30) + 5
    with open(big, "rb") as f:
        f.seek(1 << 30)
        assert f.read() == b"tail\n"
    assert big.stat().st_blocks * 512 < 64 << 20, "the file is no longer sparse"


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 4 MiB tmpfs for the workspace."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_copy_back_that_does_not_fit_fails_the_stage(small_disk: Path, busybox_image: str) -> None:
    """A file too large for the space left on the host fails the stage (copy mode), with a message
    naming the file and what to do; the next stage does not run on a half-copied workspace."""
    (small_disk / "pipeline.py").write_text(
        textwrap.dedent(
            """
            import pipekit as pk


            @pk.stage(image="busybox")
            def fill(ctx):
                ctx.sh("head -c 8000000 /dev/urandom > too-big.bin")


            @pk.stage(image="busybox")
            def after(ctx, fill):
                ctx.sh("echo ran")
            """
        )
    )
    done = _pipekit(small_disk, busybox_image, "copy", "--log-format", "json")
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Traceback" not in text
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "stage finished" and e.get("status") == "failed"]
    assert [e["stage"] for e in failed] == ["fill"], text
    assert "too-big.bin" in failed[0]["error"] and "full" in failed[0]["error"], failed[0]
    assert not list(small_disk.glob(".pipekit-tmp-*")), "the temporary file was left behind"


SECRETS = """
@pk.stage(image="busybox")
def look(ctx):
    ctx.sh("for f in .env.ci ci/deploy.env; do if [ -s $f ]; then echo seen $f; fi; done")


@pk.stage(image="busybox")
def build(ctx):
    return ctx.docker.build(tag="pipekit-hostile-test:{tag}")


@pk.stage(image=build)
def inside(ctx):
    ctx.sh("ls -a /ctx /ctx/ci")
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_secrets_file_stays_out_of_stages_and_images(
    tmp_path: Path, busybox_image: str, mode: str, docker_client: object
) -> None:
    """The secrets file (given on the command line, or the default of [tool.pipekit]) is neither
    visible to a container stage nor sent in an image's build context, wherever it lies in the
    workspace; it is still there, unchanged, after the run."""
    tag = f"{mode}-{os.getpid()}"
    folder = _folder(tmp_path, SECRETS.format(tag=tag))
    (folder / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY . /ctx\n")
    (folder / ".env.ci").write_text("REGISTRY_PASSWORD=hunter2-but-longer\n")
    (folder / "ci").mkdir()
    (folder / "ci" / "deploy.env").write_text("DEPLOY_TOKEN=abcdef0123456789\n")
    (folder / "pyproject.toml").write_text('[tool.pipekit]\nsecrets-file = ".env.ci"\n')
    try:
        for given in ([], ["--secrets-file", "ci/deploy.env"]):
            done = _pipekit(folder, busybox_image, mode, "--log-format", "json", *given)
            assert done.returncode == 0, done.stdout + done.stderr
            events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            lines = [(e["stage"], e["line"]) for e in events if e["event"] == "output"]
            hidden = ".env.ci" if not given else "ci/deploy.env"
            listing = [line for stage, line in lines if stage == "inside"]
            assert "Dockerfile" in listing, listing  # (the context did reach the image)
            seen_by_stage, in_image = ("look", f"seen {hidden}") in lines, hidden.split("/")[-1] in listing
            assert (seen_by_stage, in_image) == (False, False), lines
    finally:
        for image in docker_client.images.list(name="pipekit-hostile-test"):  # type: ignore[attr-defined]
            if f"pipekit-hostile-test:{tag}" in image.tags:
                docker_client.images.remove(image.id, force=True)  # type: ignore[attr-defined]
    assert (folder / ".env.ci").read_text() == "REGISTRY_PASSWORD=hunter2-but-longer\n"
    assert (folder / "ci" / "deploy.env").read_text() == "DEPLOY_TOKEN=abcdef0123456789\n"
