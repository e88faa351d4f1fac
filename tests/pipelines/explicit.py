import pipekit as pk

pipeline = pk.Pipeline(name="explicit", image="busybox", env={"LEVEL": "pipeline", "KEEP": "p"})


@pipeline.stage
def first(ctx):
    return ctx.sh("echo $LEVEL $KEEP").stdout.strip()


@pipeline.stage(env={"LEVEL": "stage"}, name="second-stage")
def second(ctx, first):
    return [first, ctx.sh("echo $LEVEL $KEEP").stdout.strip(), ctx.sh("echo $LEVEL", env={"LEVEL": "call"}).stdout.strip()]


@pk.stage(image="busybox")
def bare(ctx):
    return "bare"
