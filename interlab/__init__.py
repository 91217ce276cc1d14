"""interlab: inter-image contrastive self-supervised learning, notebook-first."""

import os

# cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when a process makes its first cuBLAS handle, and
# `deterministic=true` needs this fixed workspace (interlab.devices.CUBLAS_DETERMINISTIC_WORKSPACE).
# A run may start after other CUDA work in the same process (a notebook, the GPU tests), so
# it is set here, before any. It is torch's default size on Hopper GPUs; the user's value wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__version__ = "0.1.0"
