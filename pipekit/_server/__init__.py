"""``pipekit serve``: configuration, the queue and its ``pipekit run`` children, triggers, git mirrors and
workspaces, commit statuses, the Starlette app and its pages.
"""
