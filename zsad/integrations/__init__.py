"""Bridges to other tools, each behind its own optional extra (``pip install "zsad[anomalib]"``).

They sit above the builder: they build detectors with :func:`zsad.create` and never reach into the methods.
"""
