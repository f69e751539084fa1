"""Reference material for the demo bundle: CT phantoms, a small U-Net, its training.

:mod:`edgemed.export.reference.phantoms` needs only NumPy and OpenCV;
:mod:`edgemed.export.reference.unet` and :mod:`edgemed.export.reference.train_demo` need
PyTorch (the ``export`` extra).
"""

from __future__ import annotations

__all__: list[str] = []
