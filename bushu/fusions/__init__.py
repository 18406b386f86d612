"""Fusions to standard ONNX ops, one rule per file: pattern / refuse (why a candidate was refused) / replace.

Each file registers one pass (``fuse-…``) with :mod:`bushu.passes.registry`; see :mod:`bushu.fusions.base` for
the contract.
"""
