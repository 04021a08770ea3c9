"""Stage 2, tiling: slide catalog -> tissue mask -> patch grid + labels -> per-slide jobs ->
merge (balance and split) -> manifest, with a QC picture per slide.

Modules in data-flow order: ``catalog``, ``tissue``, ``grid``, ``params``, ``jobs`` (with
``qc``), ``sampling``, ``manifest``, ``merge``. Imports no torch (cluster shards start fast).
"""
