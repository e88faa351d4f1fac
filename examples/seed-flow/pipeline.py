"""The classic Jenkinsfile, in pipekit: Build (docker build), Test (docker run ... unittest), Deploy (push)."""

import pipekit as pk

REGISTRY = pk.param("registry", default="localhost:5000", help="the registry Deploy pushes to")
BASE = pk.param("base_image", default="python:3.11-slim", help="the image the app's Dockerfile starts FROM")
IMAGE = "seed-flow"


@pk.stage
def build(ctx) -> pk.Image:
    return ctx.docker.build(".", tag=f"{IMAGE}:latest", build_args={"BASE": ctx.params.base_image})


@pk.stage
def test(ctx, build: pk.Image):
    ctx.docker.run(build, "python -m unittest discover -v")


# The app itself, started from the image `build` made in this run (its CMD serves on port 8000),
# reachable from the smoke stage as http://app:8000; healthy once port 8000 accepts connections.
app = pk.Service("app", image=build, ports=[8000])


@pk.stage(image=build, workspace=False, services=[app])  # no checkout mounted: this tests what the image holds
def smoke(ctx):
    # Runs in the image's WORKDIR (/app). With the workspace mounted, `import app` would find the
    # checkout's app.py instead, and the smoke test would prove nothing about the image.
    ctx.sh('test "$(python3 -c "import app; print(app.__file__)")" = /app/app.py')
    # and the running app answers over the network, by its service name
    ctx.sh(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://app:8000/smoke').read().decode())\""
    )


@pk.stage(needs=[test, smoke], when=pk.branch("main"))  # Jenkins: when { branch 'main' }
def deploy(ctx, build: pk.Image):
    ref = f"{ctx.params.registry}/{IMAGE}:latest"
    digest = ctx.docker.push(
        build,
        ref,
        credentials=pk.Credentials(username=pk.secret("REGISTRY_USER"), password=pk.secret("REGISTRY_PASSWORD")),
    )
    ctx.log.info("pushed", ref=ref, digest=digest)
    return f"{ctx.params.registry}/{IMAGE}@{digest}"
