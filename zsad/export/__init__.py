"""Deploying without PyTorch at inference: ``zsad export`` writes a method's backbone forward as an ONNX graph
(fp32, and int8 on request) with the tensors and text embeddings scoring needs; ``zsad.create(...,
runtime="onnx", export=DIR)`` scores from that folder on ONNX Runtime with the same runner, outputs and decisions.

Modules: :mod:`.build` (the export), :mod:`.graph` (the ONNX graph), :mod:`.record` (what a method asks of its
backbone), :mod:`.fidelity` (PyTorch vs export, measured at export), :mod:`.quantize` (int8 and its exclusion
search), :mod:`.manifest` (``export.json`` and mismatch checks), :mod:`.runtime` (scoring from a folder). The
ONNX backbone itself is :mod:`zsad.backbones.onnx`. Needs the ``onnx`` extra (``pip install "zsad[onnx]"``).
"""
