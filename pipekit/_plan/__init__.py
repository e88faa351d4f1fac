"""A pipeline checked and planned: validation, the DAG, the order, the resolved plan, the checks before a run,
the graph's drawings.
"""
