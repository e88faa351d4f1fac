import pipekit as pk


@pk.stage
def build(ctx):
    pass


@pk.stage
def build(ctx):  # noqa: F811 - the mistake under test
    pass
