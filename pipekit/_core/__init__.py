"""Values and helpers every layer uses: ``slug`` and friends, safe file writes, output streams, stage and run
results, test reports.
"""
