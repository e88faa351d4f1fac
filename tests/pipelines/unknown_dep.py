import pipekit as pk


@pk.stage
def lint(ctx):
    pass


@pk.stage(needs=["lnt"])
def test(ctx):
    pass
