"""rtrace: Mixture-of-Experts routing traces (.rtrace files, spec/format.md)."""
from ._format import FormatError, bf16_bits_to_float, float_to_bf16_bits
from .reader import Reader, Record, native_available
from .writer import Writer

__version__ = "1.0.0"
__all__ = ["Writer", "Reader", "Record", "FormatError", "bf16_bits_to_float", "float_to_bf16_bits",
           "native_available", "adapters", "torch", "megatron", "ray"]


def __getattr__(name):
    import importlib
    if name in ("adapters", "torch", "megatron", "ray"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
