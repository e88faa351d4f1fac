import pipekit as pk


@pk.stage
def a(ctx, b):
    pass


@pk.stage
def b(ctx, a):
    pass


@pk.stage
def c(ctx):
    pass
