"""Inference precision: ``fp32``, ``bf16`` or ``fp16`` autocast, one rule for every interface.

``SLAP(precision=...)`` and ``slap ... --precision`` take one of
``PRECISIONS``; ``fp32`` runs without autocast, ``bf16`` and ``fp16`` run the
encoders and the caption decoder under ``torch.autocast`` of that dtype (the
same context SpeechBrain's ``Pretrained`` builds from ``run_opts["precision"]``).
Whatever the precision, log-mel features, softmax temperatures and the
returned embeddings are fp32.

* ``bf16`` is the half precision for CPUs: it keeps fp32's exponent range, and
  on CPUs with AVX-512 BF16 or AMX its matmuls run faster than fp32 ones.
  Embeddings are within cosine 0.99 of fp32 ones.
* ``fp16`` is for CUDA GPUs; on a CPU, torch computes it in slow fallbacks.

Authors
 * speechbrain-slap contributors 2026
"""

import torch
from speechbrain.utils.autocast import TorchAutocast

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str) -> str:
    """Checks a precision name: one of ``PRECISIONS``.

    Arguments
    ---------
    name : str
        ``fp32``, ``bf16`` or ``fp16``.

    Returns
    -------
    str

    Example
    -------
    >>> check_precision("bf16")
    'bf16'
    >>> check_precision("float16")
    Traceback (most recent call last):
    ...
    ValueError: precision must be one of fp32, bf16, fp16; got 'float16'
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


def inference_context(name: str, device_type: str) -> TorchAutocast:
    """The autocast context of a precision on a device type (a no-op for ``fp32``).

    Arguments
    ---------
    name : str
        One of ``PRECISIONS``.
    device_type : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    speechbrain.utils.autocast.TorchAutocast

    Example
    -------
    >>> with inference_context("bf16", "cpu"):
    ...     out = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    >>> out.dtype, out.shape
    (torch.bfloat16, torch.Size([3, 2]))
    """
    return TorchAutocast(device_type=device_type, dtype=DTYPES[check_precision(name)])
