"""``pipekit ci init github|gitlab|jenkins``: a thin wrapper that runs the pipeline in that CI.

Each wrapper checks the project out, installs pipekit (by default the distribution ``pipekit-ci``
at this very version; ``--install`` says otherwise), shares the stage cache through the CI's own
registry (GitHub's ghcr.io, GitLab's project registry: ``--cache-registry``, read on pull/merge
requests, read-write on the default branch; Jenkins keeps ``.pipekit`` with the Job Cacher
plugin), runs ``pipekit run --junit``,
publishes the JUnit file and the run's artifacts, and passes the CI's secrets to pipekit under the
names pipeline.py asks for (``pk.secret("NAME")``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pipekit import __version__
from pipekit.exceptions import UsageError

__all__ = ["DISTRIBUTION", "TARGETS", "install_spec", "running_version", "wrapper"]

#: pipekit's name on the package index (``pipekit`` there is another project); the import name is ``pipekit``
DISTRIBUTION = "pipekit-ci"

#: where each CI reads its configuration, relative to the project
TARGETS = {"github": ".github/workflows/pipekit.yml", "gitlab": ".gitlab-ci.yml", "jenkins": "Jenkinsfile"}
JUNIT = "reports/pipekit.xml"
ARTIFACTS = "pipekit-artifacts"


_SAFE = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%<>-]+")  # nothing a shell, YAML or Groovy string reads
_VERSION = re.compile(r"v?\d[A-Za-z0-9.+!_-]*")
_SPECIFIER = re.compile(r"(===|==|!=|<=|>=|~=|<|>)\s*\S.*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_ARCHIVE = (".whl", ".tar.gz", ".zip")
_OURS = re.compile(r"pipekit[-_.]+ci(\[[A-Za-z0-9_,-]+\])?", re.IGNORECASE)
_REQUIREMENT = re.compile(rf"{_OURS.pattern}\s*(?:@\s*(?P<url>\S+)|(?P<spec>[=!<>~][^@]*))?", re.IGNORECASE)
_HELP = (
    f"--install takes a version (0.2.0), a version specifier ('>=0.2,<0.3'), the URL of a wheel or of a source"
    f" archive, a git URL (git+https://host/org/pipekit.git@v0.2.0), a path to a wheel, or a requirement of"
    f" {DISTRIBUTION} ('{DISTRIBUTION}[server]==0.2.0')"
)


def running_version() -> str:
    """The version of the running pipekit: its installed distribution's, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout (PYTHONPATH) without installing it
        return __version__


def install_spec(given: str | None = None) -> str:
    """What the wrappers give ``pip install`` for ``--install GIVEN``: by default this version of
    pipekit from the package index; a version, a specifier, a URL (wheel, archive, ``git+``), a
    path to a wheel, or a requirement of pipekit's distribution otherwise (UsageError for the rest)."""
    if given is None:
        return f"{DISTRIBUTION}=={running_version()}"
    text = given.strip()
    if (m := _REQUIREMENT.fullmatch(text)) is not None:
        url, spec = m.group("url"), m.group("spec")
        extras = m.group(1) or ""
        result = f"{DISTRIBUTION}{extras} @ {url}" if url else f"{DISTRIBUTION}{extras}{(spec or '').replace(' ', '')}"
    elif _VERSION.fullmatch(text):
        result = f"{DISTRIBUTION}=={text}"
    elif _SPECIFIER.fullmatch(text):
        result = DISTRIBUTION + text.replace(" ", "")
    elif _URL.fullmatch(text):
        result = f"{DISTRIBUTION} @ {text}"
    elif text.endswith(_ARCHIVE) and " " not in text:
        result = text if text.startswith((".", "/")) else f"./{text}"
    elif re.match(r"pipekit(?![-_.]*ci)\b", text, re.IGNORECASE):
        raise UsageError(f"{text!r}: 'pipekit' on the package index is another project; {_HELP}")
    else:
        raise UsageError(f"{given!r} is not something pip can install pipekit from: {_HELP}")
    if re.search(r"://[^/@\s]*:[^/@\s]*@", result):
        shown = re.sub(r"(://[^/@\s]*:)[^/@\s]*@", r"\1***@", text)  # (not repeated in the message)
        raise UsageError(f"{shown!r} holds a password (user:password@): it would be committed with the CI's file")
    if not all(_SAFE.fullmatch(part) for part in result.split(" @ ")):
        raise UsageError(f"{given!r} holds a character the CI file cannot carry (quotes, $, \\, spaces, ...): {_HELP}")
    return result


#: GitHub: the mode of the shared cache, by event and branch (a push to the default branch writes)
GITHUB_CACHE_MODE = (
    "${{ github.event_name == 'push' && github.ref_name == github.event.repository.default_branch"
    " && 'readwrite' || 'read' }}"
)


def _github(secrets: Sequence[str], pipeline: str, install: str) -> str:
    env = "".join(f"          {s}: ${{{{ secrets.{s} }}}}\n" for s in secrets)
    return f"""# Made by `pipekit ci init github` (pipekit {running_version()}). Runs {pipeline} on every push.
name: pipekit
on:
  push:
  pull_request:
  workflow_dispatch:

jobs:
  pipeline:
    runs-on: ubuntu-latest
    permissions:
      contents: read
      packages: write  # the shared stage cache in ghcr.io
      checks: write  # the test results
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - name: Install pipekit
        run: python -m pip install "{install}"
      # The stage cache is shared through this repository's packages on ghcr.io (docs/history.md,
      # "Sharing the cache"): pull requests only read it, pushes to the default branch also write it.
      # To turn it off, set PIPEKIT_CACHE_MODE: "off" below. Another registry (GitHub Enterprise
      # Server's, your own): set PIPEKIT_CACHE_REGISTRY (REGISTRY/REPOSITORY) in the step's env.
      - name: Run the pipeline
        run: |
          export PIPEKIT_CACHE_REGISTRY="${{PIPEKIT_CACHE_REGISTRY:-ghcr.io/${{GITHUB_REPOSITORY,,}}/pipekit-cache}}"
          pipekit run -f {pipeline} --junit {JUNIT}
        env:
          PIPEKIT_CACHE_MODE: {GITHUB_CACHE_MODE}
          PIPEKIT_REGISTRY_USER: ${{{{ github.actor }}}}
          PIPEKIT_REGISTRY_PASSWORD: ${{{{ secrets.GITHUB_TOKEN }}}}
{env}      - name: Keep the run's artifacts
        if: always()
        run: pipekit artifacts last -f {pipeline} --dest {ARTIFACTS} || true
      - name: Publish the test results
        if: always()
        uses: mikepenz/action-junit-report@v4
        with:
          report_paths: {JUNIT}
      - name: Upload the artifacts and the JUnit file
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: pipekit
          path: |
            {JUNIT}
            {ARTIFACTS}/
          if-no-files-found: ignore
"""


def _gitlab(secrets: Sequence[str], pipeline: str, install: str) -> str:
    names = ", ".join(secrets) if secrets else "none"
    return f"""# Made by `pipekit ci init gitlab` (pipekit {running_version()}). Runs {pipeline} on every push.
# Secrets pipeline.py asks for ({names}): define each as a masked CI/CD variable of the same name
# (Settings > CI/CD > Variables); GitLab passes them to the job, and pipekit reads them from there.
pipekit:
  image: python:3.12
  services:
    - docker:dind
  # The stage cache is shared through this project's container registry (docs/history.md, "Sharing
  # the cache"): merge requests and other branches only read it, the default branch also writes it.
  # To turn it off, set PIPEKIT_CACHE_MODE: "off" (in both places).
  variables:
    DOCKER_HOST: tcp://docker:2375
    DOCKER_TLS_CERTDIR: ""
    PIPEKIT_CACHE_REGISTRY: $CI_REGISTRY_IMAGE/pipekit-cache
    PIPEKIT_REGISTRY_USER: $CI_REGISTRY_USER
    PIPEKIT_REGISTRY_PASSWORD: $CI_REGISTRY_PASSWORD
    PIPEKIT_CACHE_MODE: read
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      variables:
        PIPEKIT_CACHE_MODE: readwrite
    - when: on_success
  before_script:
    - python -m pip install "{install}"
  script:
    - pipekit run -f {pipeline} --junit {JUNIT}
  after_script:
    - pipekit artifacts last -f {pipeline} --dest {ARTIFACTS} || true
  artifacts:
    when: always
    paths:
      - {JUNIT}
      - {ARTIFACTS}/
    reports:
      junit: {JUNIT}
"""


def _jenkins(secrets: Sequence[str], pipeline: str, install: str) -> str:
    env = "".join(f"        {s} = credentials('{s}')\n" for s in secrets)
    env_block = f"    environment {{\n{env}    }}\n" if env else ""
    return f"""// Made by `pipekit ci init jenkins` (pipekit {running_version()}). Runs {pipeline} on every build.
// Secrets come from Jenkins credentials of the same ids (Manage Jenkins > Credentials).
// The stage cache (.pipekit) is kept with the Job Cacher plugin's `cache` step. To share it through a
// registry instead (docs/history.md, "Sharing the cache"), set PIPEKIT_CACHE_REGISTRY, PIPEKIT_CACHE_MODE
// (readwrite on the default branch, read elsewhere) and PIPEKIT_REGISTRY_USER/_PASSWORD in `environment`.
pipeline {{
    agent any
{env_block}    stages {{
        stage('pipekit') {{
            steps {{
                sh 'python3 -m venv .pipekit-venv && .pipekit-venv/bin/pip install "{install}"'
                cache(maxCacheSize: 2048, caches: [
                    arbitraryFileCache(path: '.pipekit', cacheValidityDecidingFile: '{pipeline}')
                ]) {{
                    sh '.pipekit-venv/bin/pipekit run -f {pipeline} --junit {JUNIT}'
                }}
            }}
        }}
    }}
    post {{
        always {{
            junit allowEmptyResults: true, testResults: '{JUNIT}'
            sh '.pipekit-venv/bin/pipekit artifacts last -f {pipeline} --dest {ARTIFACTS} || true'
            archiveArtifacts artifacts: '{JUNIT}, {ARTIFACTS}/**', allowEmptyArchive: true
        }}
    }}
}}
"""


_MAKERS = {"github": _github, "gitlab": _gitlab, "jenkins": _jenkins}


def wrapper(
    ci: str, secrets: Sequence[str], pipeline: str = "pipeline.py", install: str | None = None
) -> tuple[str, str]:
    """The path (relative to the project) and the text of the CI's wrapper (``install``: what
    ``--install`` was given, see :func:`install_spec`)."""
    return TARGETS[ci], _MAKERS[ci](sorted(secrets), pipeline, install_spec(install))


def write(ci: str, root: Path, secrets: Sequence[str], pipeline: str, force: bool, install: str | None = None) -> Path:
    """Write the wrapper; FileExistsError when there is one and ``force`` is not given."""
    relative, text = wrapper(ci, secrets, pipeline, install)
    target = root / relative
    if target.exists() and not force:
        raise FileExistsError(str(target))
    from pipekit._core.util import write_file

    try:  # never through a link a stage left on the way (pipekit._core.safefile)
        return write_file(target, text, root=root)
    except OSError as e:
        raise UsageError(f"Cannot write {target}: {e.strerror}") from e
