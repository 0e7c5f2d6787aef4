"""Prototype projection head for masked self-distillation (iBOT / DINO style).

``MLP (GELU) -> bottleneck -> L2 normalise -> weight-normalised linear to K
prototypes``. Student and teacher each own a copy; the teacher's is the EMA of
the student's (``speechbrain_slap.ema``).

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from torch import nn


class PrototypeHead(nn.Module):
    """Projects token features to prototype logits.

    Arguments
    ---------
    input_size : int
        Width of the encoder tokens.
    n_prototypes : int
        Number of prototypes ``K`` (8192 for base).
    hidden_size : int
        Hidden width of the MLP (2048).
    bottleneck_size : int
        Width before the prototype layer (256).
    n_layers : int
        Linear layers in the MLP (3).

    Example
    -------
    >>> head = PrototypeHead(64, n_prototypes=32, hidden_size=128, bottleneck_size=16)
    >>> head(torch.randn(5, 64)).shape
    torch.Size([5, 32])
    """

    def __init__(
        self,
        input_size: int,
        n_prototypes: int = 8192,
        hidden_size: int = 2048,
        bottleneck_size: int = 256,
        n_layers: int = 3,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        sizes = [input_size] + [hidden_size] * (n_layers - 1) + [bottleneck_size]
        layers = []
        for i in range(n_layers):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_size, n_prototypes, bias=False)
        )
        # DINO keeps the norm of every prototype at 1 (not learned), so logits
        # are cosine similarities in [-1, 1] and exp(logit / 0.04) cannot overflow.
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad = False
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, input_size)`` token features -> ``(M, n_prototypes)`` logits."""
        z = nn.functional.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return self.prototypes(z)
