"""The pipeline from the README: three stages, one of which passes a value to another."""

import pipekit as pk


@pk.stage(image="alpine:3.20")
def lint(ctx: pk.Context) -> None:
    ctx.sh("echo linting")


@pk.stage(image="alpine:3.20")
def version(ctx):
    return ctx.sh("echo 1.2.3").stdout.strip()


@pk.stage(image="alpine:3.20", needs=[lint])
def package(ctx, version):  # parameter named after a stage: depends on it, receives its return value
    ctx.sh(f"echo packaging {version} > dist.txt")
