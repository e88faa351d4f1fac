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


@pk.stage(needs=[test], when=pk.branch("main"))  # Jenkins: when { branch 'main' }
def deploy(ctx, build: pk.Image):
    ref = f"{ctx.params.registry}/{IMAGE}:latest"
    digest = ctx.docker.push(
        build,
        ref,
        credentials=pk.Credentials(username=pk.secret("REGISTRY_USER"), password=pk.secret("REGISTRY_PASSWORD")),
    )
    ctx.log.info("pushed", ref=ref, digest=digest)
    return f"{ctx.params.registry}/{IMAGE}@{digest}"
