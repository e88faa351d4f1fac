"""``pipekit import jenkinsfile``: a declarative Jenkinsfile parsed and written as a pipeline.py."""
