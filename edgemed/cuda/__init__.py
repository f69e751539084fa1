"""CUDA preprocessing and postprocessing: the only package that imports pycuda."""
