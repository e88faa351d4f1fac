"""What a pipeline.py is written with (``pk.stage``, ``Pipeline``, options, conditions, matrix, params, secrets,
cache inputs, triggers) and its loading.
"""
