"""``pipekit init``: a project looked at, and a pipeline.py, its tests and defaults written for it."""
