"""One run, from its request to its result: ``RunRequest``/``setup``, the runner, the scheduler, each stage's
life (``StageRun``, ``Context``, ``ctx.docker``, posts, outputs, locks), the plan view.
"""
