"""NumPy kernels, one module per family; each registers itself with `numpy_kernel`."""
