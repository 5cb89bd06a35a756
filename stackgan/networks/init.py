"""Weight initialisation of both references (StackGAN-Pytorch ``weights_init``, TF custom ops)."""

from __future__ import annotations

from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise ``module`` in place and return it.

    Conv and Linear weights ~ N(0, std); Linear biases 0; BatchNorm gamma ~ N(1, std),
    beta 0. Conv biases (only the pytorch preset's logit convs have one) keep PyTorch's
    default uniform init, because the reference's ``weights_init`` leaves them alone.
    TF draws conv weights from a normal truncated at 2 std; a plain normal is used here.
    """
    for m in module.modules():
        if isinstance(m, _CONV):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BN) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module
