"""DeepSeek's FP8 checkpoint format lives in the shared `r1mega.models.fp8` (any checkpoint may carry it)."""
from r1mega.models.fp8 import BLOCK, E4M3_MAX, FP8, dequantize, is_fp8, quantize, scale_name  # noqa: F401
