"""Kernels shared by every model family: matrix multiplies behind one seam (linear.py), attention
by query blocks (block_attention.py), FP8 quantisation, CPU expert spreading."""
from r1mega.kernels.linear import grouped_linear, linear, use_backend, active_backend  # noqa: F401
