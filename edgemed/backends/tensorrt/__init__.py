"""The TensorRT backend and everything it owns: the backend itself, the engine cache
(keys, sidecars, trust checks), the builder, optimisation profiles and the shims over
TensorRT 10.3 to 11.x differences. ``tensorrt`` is imported lazily inside these modules,
so importing the package works without it."""
