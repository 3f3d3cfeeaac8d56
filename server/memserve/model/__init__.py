"""ONNX bytes in, a compiled `Plan` out."""
from .compile import CompileOptions, compile_model
from .plan import IOSpec, Plan, Step, TensorSlot

__all__ = ["CompileOptions", "IOSpec", "Plan", "Step", "TensorSlot", "compile_model"]
