"""The classic Jenkinsfile, in pipekit: Build (docker build), Test (docker run ... unittest), Deploy (push)."""

import pipekit as pk

REGISTRY = pk.param("registry", default="localhost:5000", help="the registry Deploy pushes to")
BASE = pk.param("base_image", default="python:3.11-slim", help="the image the app's Dockerfile starts FROM")
HTTP_SMOKE = pk.param(
    "http_smoke", default=True, help="call the app over the network (needs the engine's containers to reach each other)"
)
IMAGE = "seed-flow"


@pk.stage
def build(ctx) -> pk.Image:
    return ctx.docker.build(".", tag=f"{IMAGE}:latest", build_args={"BASE": ctx.params.base_image})


@pk.stage
def test(ctx, build: pk.Image):
    ctx.docker.run(build, "python -m unittest discover -v")


# The app itself, started from the image `build` made in this run (its CMD serves on port 8000),
# reachable from the smoke stage as http://app:8000. Healthy once /health answers (checked inside
# the service's container, so it works on a remote engine and a swarm too; `ports=[8000]` alone
# would do on a local engine).
app = pk.Service(
    "app",
    image=build,
    ports=[8000],
    healthcheck=["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"],
)


@pk.stage(image=build, workspace=False, services=[app])  # no checkout mounted: this tests what the image holds
def smoke(ctx):
    # Runs in the image's WORKDIR (/app). With the workspace mounted, `import app` would find the
    # checkout's app.py instead, and the smoke test would prove nothing about the image.
    ctx.sh('test "$(python3 -c "import app; print(app.__file__)")" = /app/app.py')
    ctx.sh("python3 -c 'import app; print(app.greeting())'")
    # and the app, running from the same image, answers over the network, by its service name
    if ctx.params.http_smoke:
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
