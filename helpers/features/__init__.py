"""Frozen-backbone features: the one extractor and its cache, ONNX Runtime, stage taps, robust representations.

extract (the extractor and its on-disk cache), onnx_backbone (the one ONNX export and session cache),
taps (pooled stage outputs), representations (several layers, mirrors, whitening: features made robust
without gradient training).
"""
