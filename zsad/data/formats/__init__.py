"""One reader per benchmark layout; :mod:`zsad.data.datasets` picks one and wraps it in a ``Dataset``.

Every reader module exposes ``categories(root) -> tuple[str, ...]`` and
``samples(root, category, split) -> list[Sample]``.
"""
