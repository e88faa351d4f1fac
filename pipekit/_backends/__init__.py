"""Where stages run, behind ``pipekit.backend``'s seam: the host, the fake (``pipekit.testing``), registry
errors, and ``docker/`` and ``swarm/``.
"""
