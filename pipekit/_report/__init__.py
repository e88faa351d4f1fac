"""The self-contained HTML report of a recorded run (its data, the page, its script and style)."""
