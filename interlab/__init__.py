"""interlab: inter-image contrastive self-supervised learning, notebook-first."""

import os

# cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when a process makes its first cuBLAS handle, and
# `deterministic=true` needs a fixed workspace. A run may start after other CUDA work in the
# same process (a notebook, the GPU tests), so it is set here, before any. 32 MiB, torch's
# default size on Hopper GPUs; the user's value wins.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)

__version__ = "0.1.0"
