"""A face recogniser you can keep: embedders, enrolment, answering "who" or "unknown", saving and export.

embedders (how a photo becomes an embedding: raw, head, whitened), recognizer (the gallery, answers,
the file format), pipeline (from photos to a fitted recogniser and its evaluation), export
(TorchScript and ONNX).
"""
