"""The exported graph: uint8 NHWC image -> in-graph normalization -> ViT -> {logits, embedding}."""

from __future__ import annotations

import torch
from torch import nn

INPUT_FORMATS = ("uint8", "float32")


class ImageModel(nn.Module):
    """Wraps a timm ViT for export (DESIGN.md, "Artifact contract").

    ``input_format="uint8"``: ``image`` is uint8 [N, H, W, 3] RGB, normalized here exactly as timm's
    ToTensor + Normalize do, ``(x / 255 - mean) / std``. ``"float32"``: ``image`` is an already
    normalized float32 [N, 3, H, W] tensor. Outputs ``logits`` and ``embedding`` (timm's
    ``forward_head(forward_features(x), pre_logits=True)``), and ``tokens`` when asked.
    """

    def __init__(self, model: nn.Module, data_config: dict, input_format: str = "uint8", tokens: bool = False):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format={input_format!r}; expected one of {INPUT_FORMATS}")
        self.model = model
        self.input_format = input_format
        self.tokens = tokens
        self.register_buffer("mean", torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def output_names(self) -> list[str]:
        return ["logits", "embedding"] + (["tokens"] if self.tokens else [])

    def forward(self, image: torch.Tensor):
        if self.input_format == "uint8":
            # Cast first: TensorRT takes UINT8 only as an I/O format that goes straight into a Cast;
            # a Transpose on uint8 fails its ONNX parser (tests/test_tensorrt_build.py).
            x = image.to(torch.float32).permute(0, 3, 1, 2).div(255.0)
            x = (x - self.mean) / self.std
        else:
            x = image
        feats = self.model.forward_features(x)
        emb = self.model.forward_head(feats, pre_logits=True)
        logits = self.model.get_classifier()(emb)
        return (logits, emb, feats) if self.tokens else (logits, emb)

    def example_input(self, batch: int, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        if self.input_format == "uint8":
            return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
        return torch.randn(batch, 3, h, w)
