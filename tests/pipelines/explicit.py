import pipekit as pk

pipeline = pk.Pipeline(name="explicit", image="busybox", env={"LEVEL": "pipeline", "KEEP": "p"})


@pipeline.stage
def first(ctx):
    return ctx.sh("echo $LEVEL $KEEP").stdout.strip()


@pipeline.stage(env={"LEVEL": "stage"}, name="second-stage")
def second(ctx, first):
    from_stage = ctx.sh("echo $LEVEL $KEEP").stdout.strip()
    from_call = ctx.sh("echo $LEVEL", env={"LEVEL": "call"}).stdout.strip()
    return [first, from_stage, from_call]


@pk.stage(image="busybox")
def bare(ctx):
    return "bare"
