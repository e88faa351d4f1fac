import pipekit as pk


@pk.stage
def lint(ctx)
    pass
