"""Deploying without PyTorch at inference: ``zsad export`` writes a method's backbone forward as an ONNX graph
(fp32, and int8 on request) with the tensors and text embeddings scoring needs; ``zsad.create(...,
runtime="onnx", export=DIR)`` scores from that folder on ONNX Runtime with the same runner, outputs and decisions.

Modules: :mod:`.build` (the export), :mod:`.graph` (the ONNX graph), :mod:`.record` (what a method asks of its
backbone), :mod:`.fidelity` (PyTorch vs export, measured at export), :mod:`.quantize` (int8, dynamic or static,
and its exclusion search), :mod:`.smooth` (SmoothQuant scaling before static int8), :mod:`.timing` (each runtime's
speed on the exporting CPU, for ``--runtime auto``). OpenVINO (``--runtime openvino``, extra ``zsad[openvino]``)
reads the same graphs: :mod:`zsad.backbones.openvino`. Reading an export is a backbone kind: :mod:`zsad.backbones.export_folder` (``export.json`` and the
mismatch checks) and :mod:`zsad.backbones.onnx` (``open_export``), opened by the builder (``zsad.create``). Needs the ``onnx`` extra (``pip install "zsad[onnx]"``).
"""
