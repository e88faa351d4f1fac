import pipekit as pk


@pk.stage(needs=["nowhere"])
def a(ctx, unknown_thing):
    pass
