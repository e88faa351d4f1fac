"""The command line (click): the commands, the options they share, ``[tool.pipekit]`` defaults, a server run's
``pipekit run`` child.
"""
