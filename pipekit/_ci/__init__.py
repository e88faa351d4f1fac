"""Pipekit inside a CI: output (groups, annotations, masks), the ``--junit`` file and job summary, ``ci init``'s
wrappers, and ``jenkins/``, the Jenkinsfile importer.
"""
