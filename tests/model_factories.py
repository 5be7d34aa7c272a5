"""Models for `package.module:factory` specs in the tests, e.g. `tests.model_factories:mlp`.

`mlp` is the model of policies/mlp_two_phase.freeze: layers `fc1`, `fc2`, `out`, sized for the
8x8 digits of scikit-learn (64 inputs, 10 classes). The others exercise error paths.
"""

from __future__ import annotations

import torchvision
from torch import nn


class MLP(nn.Module):
    def __init__(self, inputs: int = 64, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


def tiny_bert_config(**overrides):
    """A BERT config small enough to train in milliseconds on a CPU (random weights, nothing
    downloaded); `overrides` sets other fields, such as `num_labels`."""
    from transformers import BertConfig

    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return BertConfig(**{**fields, **overrides})


def mlp() -> MLP:
    """The model of policies/mlp_two_phase.freeze."""
    return MLP()


def pretrained_resnet() -> nn.Module:
    """Asks for pretrained weights: building it from a spec must refuse, not download."""
    return torchvision.models.resnet18(weights="DEFAULT")


def not_a_model() -> str:
    return "not a model"


def needs_an_argument(width: int) -> nn.Module:
    return nn.Linear(width, width)


def timm_vit(depth: int = 6, **overrides) -> nn.Module:
    """A timm VisionTransformer with random weights (nothing downloaded), small enough for a
    CPU test: 32x32 images in 8x8 patches, width 32. `overrides` go to its constructor."""
    from timm.models.vision_transformer import VisionTransformer

    fields = dict(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=5)
    return VisionTransformer(**{**fields, **overrides})


def timm_vit_registers() -> nn.Module:
    """The other layout of timm's ViT: register tokens, average pooling and `fc_norm`, no class
    token, LayerScale gammas."""
    return timm_vit(
        6, class_token=False, reg_tokens=4, global_pool="avg", fc_norm=True, init_values=1e-5
    )


def timm_convnext() -> nn.Module:
    """timm's smallest ConvNeXt, with random weights."""
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=5)
