import pipekit as pk


def read_config():
    return {}["missing"]


CONFIG = read_config()


@pk.stage
def lint(ctx):
    pass
