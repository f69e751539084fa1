"""TensorRT engines: cache keys, sidecars, profiles, building (tensorrt imported lazily)."""
