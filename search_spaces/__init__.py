"""The bundled search spaces (YAML), installed as ``tune_linfair.search_spaces``.

See :mod:`tune_linfair.spaces` for their format and README "Search spaces" for each one.
"""
