"""brainage_core: brain-age estimation from T1-weighted MRI with Rank-N-Contrast.

The package is organised one module per idea, with data flowing one way::

    manifest -> imaging (cached tensors) -> models + losses -> train -> predictions.csv
             -> metrics / interpret / clinical -> notebooks -> book
"""

from __future__ import annotations

__version__ = "0.1.0"
