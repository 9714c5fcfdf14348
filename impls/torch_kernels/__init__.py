"""PyTorch kernels, one module per family; each registers itself with `torch_kernel`."""
