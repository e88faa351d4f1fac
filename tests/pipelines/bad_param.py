import pipekit as pk


@pk.stage
def version(ctx):
    return "1.0"


@pk.stage
def package(ctx, versoin):
    pass
