"""The export stage: trained model -> ONNX -> precision variants -> a bundle.

Runs on a workstation with PyTorch. The runtime (:mod:`edgemed`) never imports it.
"""

from __future__ import annotations

__all__: list[str] = []
