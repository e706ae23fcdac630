"""The networks: ImageNet backbones with a stage API, the embedding + margin heads, freezing by structure.

backbones (ResNet-18, EfficientNet-Lite0, and their pretrained configs), stages (the stage protocol),
freezing (the one freezing rule), heads (ArcFace, CosFace, normalised softmax), face_model
(backbone -> embedding -> head, parameter counts), backbone_tail (a backbone cut at a stage),
partial_fc (the sharded ArcFace head for many identities).
"""
