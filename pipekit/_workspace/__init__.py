"""The pipeline's folder as stages see it: tar archives to and from a stage, the folder written without following
links, copy mode's ``WorkspaceSync``.
"""
