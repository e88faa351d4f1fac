"""The run history in ``.pipekit/``: SQLite records, stage logs, artifacts, the stage cache, the recorder that
fills it.
"""
