"""Inference precision, one rule for every interface: ``fp32``, ``bf16``, ``fp16`` or ``int8``.

``SLAP(precision=...)``, ``TaggingClassifier(precision=...)`` and ``slap ...
--precision`` take one of ``PRECISIONS``; ``fp32`` runs without autocast,
``bf16`` and ``fp16`` run the encoders and the caption decoder under
``torch.autocast`` of that dtype (the same context SpeechBrain's ``Pretrained``
builds from ``run_opts["precision"]``). Whatever the precision, log-mel
features, softmax temperatures and the returned embeddings are fp32.

* ``bf16`` is the half precision for CPUs: it keeps fp32's exponent range, and
  on CPUs with AVX-512 BF16 or AMX its matmuls run faster than fp32 ones.
  Embeddings are within cosine 0.99 of fp32 ones.
* ``fp16`` is for CUDA GPUs; on a CPU, torch computes it in slow fallbacks.
* ``int8`` is for CPUs: every linear layer of the audio encoder (the patch
  embedding, attention and SwiGLU projections: nearly all of its time) and of
  its pooling head (``SLAP``; ``TaggingClassifier`` quantizes its embedding
  model) runs with int8 weights, one scale per output channel, and int8
  activations quantized on the fly, one scale per call
  (``DynamicInt8Linear``); the rest (attention itself, norms, the pooling's
  softmax, the text encoder and the decoder) stays fp32. On CPUs with
  AVX-512 VNNI these matmuls run about 3x faster than fp32 ones. Embeddings
  are within cosine 0.98 of fp32 ones.

Authors
 * speechbrain-slap contributors 2026
"""

import copy

import torch
from speechbrain.utils.autocast import TorchAutocast
from torch import nn

from speechbrain_slap.lobes.audio_encoder import enable_inference_layout

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# The autocast dtype of each precision; int8 keeps fp32 activations between its int8 matmuls.
DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.float32,
}


def check_precision(name: str) -> str:
    """Checks a precision name: one of ``PRECISIONS``.

    Arguments
    ---------
    name : str
        ``fp32``, ``bf16``, ``fp16`` or ``int8``.

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
    ValueError: precision must be one of fp32, bf16, fp16, int8; got 'float16'
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


def inference_context(name: str, device_type: str) -> TorchAutocast:
    """The autocast context of a precision on a device type (a no-op for ``fp32`` and ``int8``).

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


def _int8_engine() -> str:
    """The quantized engine int8 weights are packed for: oneDNN where torch has it.

    oneDNN's int8 matmuls use the CPU's AVX-512 VNNI instructions, with
    full-range (8-bit) inputs where the CPU has them; the packed weights keep
    their engine, so torch's process-wide setting is changed only while packing.
    """
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "onednn" in engines else torch.backends.quantized.engine


class DynamicInt8Linear(nn.Module):
    """An ``nn.Linear`` with int8 weights and dynamically quantized int8 inputs (CPU).

    The weight gets one symmetric scale per output channel (its largest
    magnitude / 127); each call quantizes its input with one scale from the
    input's range, multiplies in int8 with int32 sums and returns fp32
    (torch's ``quantized::linear_dynamic`` kernel). Inference only: it holds
    no parameters and has no gradient.

    Arguments
    ---------
    linear : torch.nn.Linear
        The fp32 layer to copy (it is left unchanged).

    Example
    -------
    >>> linear = torch.nn.Linear(64, 32)
    >>> x = torch.randn(10, 64)
    >>> error = (DynamicInt8Linear(linear)(x) - linear(x)).norm() / linear(x).norm()
    >>> bool(error < 0.03)
    True
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        zero_point = torch.zeros(weight.shape[0], dtype=torch.long)
        qweight = torch.quantize_per_channel(weight, scale.double(), zero_point, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        engine, previous = _int8_engine(), torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        finally:
            torch.backends.quantized.engine = previous
        # Without VNNI (or with fbgemm) the int8 kernels sum pairs of products in 16
        # bits, which full-range inputs can saturate: inputs are then quantized to 7 bits.
        self.reduce_range = engine != "onednn" or not torch.cpu._is_vnni_supported()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., out_features)`` fp32."""
        if x.device.type != "cpu":
            raise RuntimeError(f"int8 linear layers run on the CPU; got an input on {x.device}")
        if x.dim() == 1:  # the kernel takes (..., in_features) with at least one row dimension
            return self(x.unsqueeze(0)).squeeze(0)
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range)

    def extra_repr(self) -> str:
        """Sizes, as ``nn.Linear`` prints them."""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers are ``DynamicInt8Linear`` ones.

    Arguments
    ---------
    module : torch.nn.Module
        An fp32 module on the CPU (left unchanged).

    Returns
    -------
    torch.nn.Module
        The copy, in eval mode.

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> int8_copy(net)[0]
    DynamicInt8Linear(in_features=8, out_features=16, int8)
    """
    copied = copy.deepcopy(module).eval()
    linears = [(name, child) for name, child in copied.named_modules() if type(child) is nn.Linear]
    for name, child in linears:
        parent_name, _, attribute = name.rpartition(".")
        setattr(copied.get_submodule(parent_name), attribute, DynamicInt8Linear(child))
    return copied


class InferencePrecision:
    """``precision=`` and ``set_precision`` for a SpeechBrain ``Pretrained`` interface.

    A mixin placed before ``Pretrained`` in the bases. ``precision`` defaults
    to ``run_opts["precision"]`` (``int8`` there is taken too, although
    SpeechBrain's own ``Pretrained`` knows only the three autocast names).
    Under ``int8`` the modules named in ``INT8_MODULES`` are replaced in
    ``self.mods`` by their ``int8_copy`` (made once, kept); any other precision
    puts the fp32 modules back. Every SLAP audio encoder of the interface runs
    its inference layout (``SLAPAudioEncoder.inference_layout``).

    Arguments
    ---------
    *args, **kwargs
        As the ``Pretrained`` interface.
    precision : str, optional
        One of ``PRECISIONS``.
    """

    INT8_MODULES: tuple[str, ...] = ()

    def __init__(self, *args, precision: str | None = None, **kwargs):
        run_opts = dict(kwargs.get("run_opts") or {})
        if run_opts.get("precision") == "int8":
            run_opts["precision"] = "fp32"
            kwargs["run_opts"] = run_opts
            precision = "int8" if precision is None else precision
        super().__init__(*args, **kwargs)
        enable_inference_layout(self.mods)
        self._fp32_modules, self._int8_modules = {}, {}
        self.set_precision(self.precision if precision is None else precision)

    def set_precision(self, precision: str) -> None:
        """Runs the model in ``precision`` from now on; outputs stay fp32.

        Arguments
        ---------
        precision : str
            One of ``PRECISIONS`` (``int8`` on the CPU only).
        """
        precision = check_precision(precision)
        if precision == "int8" and self.device_type != "cpu":
            raise ValueError(
                f"precision int8 runs on the CPU only; the model is on {self.device}: "
                "use bf16 or fp16 there"
            )
        for name in self.INT8_MODULES:
            fp32 = self._fp32_modules.setdefault(name, self.mods[name])
            if precision == "int8":
                if name not in self._int8_modules:
                    self._int8_modules[name] = int8_copy(fp32)
                self.mods[name] = self._int8_modules[name]
            else:
                self.mods[name] = fp32
        self.precision = precision
        self.inference_ctx = inference_context(precision, self.device_type)
