"""``pipekit ci init github|gitlab|jenkins``: a thin wrapper that runs the pipeline in that CI.

Each wrapper checks the project out, installs this very version of pipekit, restores and saves
``.pipekit`` (the stage cache and history) with the CI's own cache, runs ``pipekit run --junit``,
publishes the JUnit file and the run's artifacts, and passes the CI's secrets to pipekit under the
names pipeline.py asks for (``pk.secret("NAME")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipekit import __version__
from pipekit.exceptions import UsageError

__all__ = ["TARGETS", "wrapper"]

#: where each CI reads its configuration, relative to the project
TARGETS = {"github": ".github/workflows/pipekit.yml", "gitlab": ".gitlab-ci.yml", "jenkins": "Jenkinsfile"}
JUNIT = "reports/pipekit.xml"
ARTIFACTS = "pipekit-artifacts"


def _github(secrets: Sequence[str], pipeline: str) -> str:
    env = "".join(f"          {s}: ${{{{ secrets.{s} }}}}\n" for s in secrets)
    env_block = f"        env:\n{env}" if env else ""
    return f"""# Made by `pipekit ci init github` (pipekit {__version__}). Runs {pipeline} on every push.
name: pipekit
on:
  push:
  pull_request:
  workflow_dispatch:

jobs:
  pipeline:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - name: Install pipekit
        run: python -m pip install "pipekit=={__version__}"
      - name: Restore the stage cache
        uses: actions/cache@v4
        with:
          path: .pipekit
          key: pipekit-${{{{ runner.os }}}}-${{{{ github.ref_name }}}}-${{{{ github.sha }}}}
          restore-keys: |
            pipekit-${{{{ runner.os }}}}-${{{{ github.ref_name }}}}-
            pipekit-${{{{ runner.os }}}}-
      - name: Run the pipeline
        run: pipekit run -f {pipeline} --junit {JUNIT}
{env_block}      - name: Keep the run's artifacts
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


def _gitlab(secrets: Sequence[str], pipeline: str) -> str:
    names = ", ".join(secrets) if secrets else "none"
    return f"""# Made by `pipekit ci init gitlab` (pipekit {__version__}). Runs {pipeline} on every push.
# Secrets pipeline.py asks for ({names}): define each as a masked CI/CD variable of the same name
# (Settings > CI/CD > Variables); GitLab passes them to the job, and pipekit reads them from there.
pipekit:
  image: python:3.12
  services:
    - docker:dind
  variables:
    DOCKER_HOST: tcp://docker:2375
    DOCKER_TLS_CERTDIR: ""
  cache:
    key: pipekit-$CI_COMMIT_REF_SLUG
    paths:
      - .pipekit/
  before_script:
    - python -m pip install "pipekit=={__version__}"
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


def _jenkins(secrets: Sequence[str], pipeline: str) -> str:
    env = "".join(f"        {s} = credentials('{s}')\n" for s in secrets)
    env_block = f"    environment {{\n{env}    }}\n" if env else ""
    return f"""// Made by `pipekit ci init jenkins` (pipekit {__version__}). Runs {pipeline} on every build.
// Secrets come from Jenkins credentials of the same ids (Manage Jenkins > Credentials).
// The stage cache (.pipekit) is kept with the Job Cacher plugin's `cache` step.
pipeline {{
    agent any
{env_block}    stages {{
        stage('pipekit') {{
            steps {{
                sh 'python3 -m venv .pipekit-venv && .pipekit-venv/bin/pip install "pipekit=={__version__}"'
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


def wrapper(ci: str, secrets: Sequence[str], pipeline: str = "pipeline.py") -> tuple[str, str]:
    """The path (relative to the project) and the text of the CI's wrapper."""
    return TARGETS[ci], _MAKERS[ci](sorted(secrets), pipeline)


def write(ci: str, root: Path, secrets: Sequence[str], pipeline: str, force: bool) -> Path:
    """Write the wrapper; FileExistsError when there is one and ``force`` is not given."""
    relative, text = wrapper(ci, secrets, pipeline)
    target = root / relative
    if target.exists() and not force:
        raise FileExistsError(str(target))
    from pipekit._util import write_file

    try:  # never through a link a stage left on the way (pipekit._safefile)
        return write_file(target, text, root=root)
    except OSError as e:
        raise UsageError(f"Cannot write {target}: {e.strerror}") from e
