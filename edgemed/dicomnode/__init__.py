"""The DICOM node behind ``edgemed listen``: C-STORE in, DICOM SEG and SR out.

Modules: :mod:`~edgemed.dicomnode.scp` (the SCP), :mod:`~edgemed.dicomnode.spool` (the
durable spool), :mod:`~edgemed.dicomnode.series` (completion and processing),
:mod:`~edgemed.dicomnode.deliver` (forwarding with retries), :mod:`~edgemed.dicomnode.node`
(all of them as one). Needs the ``listen`` extra (pynetdicom, highdicom), imported when
a node is made, never by ``import edgemed``.
"""

from __future__ import annotations

__all__: list[str] = []
