"""The functional core: every quantity reprscope reports, as functions of embeddings.

Two layers, one implementation:

* the computations, one module per analysis (:mod:`~reprscope.metrics.spectrum`,
  :mod:`~reprscope.metrics.center`, :mod:`~reprscope.metrics.vicreg`, :mod:`~reprscope.metrics.align_uniform`,
  :mod:`~reprscope.metrics.matrix_information`, :mod:`~reprscope.metrics.identifiability`,
  :mod:`~reprscope.metrics.knn`, :mod:`~reprscope.metrics.linear_probe`, :mod:`~reprscope.metrics.weights`,
  :mod:`~reprscope.metrics.tangent`, :mod:`~reprscope.metrics.label_free`,
  :mod:`~reprscope.metrics.linear_discriminant` (LiDAR), :mod:`~reprscope.metrics.similarity` (CKA, CCA …,
  of two layers), :mod:`~reprscope.metrics.esd` (weight spectra)), each reading a layer's embeddings in chunks
  (:class:`~reprscope.metrics._core.LayerData`: sufficient statistics per chunk, then a final step — after
  torchmetrics' update/compute) and returning tidy rows; the analyzers (:mod:`reprscope.analyzers`) are
  these computations registered with their parameters and needs;
* the public functions below, on numpy arrays or torch tensors, which run the same computations on the arrays
  in memory (a tensor on a GPU is computed on that GPU)::

      import reprscope
      reprscope.metrics.rankme(z)                               # (n, d) → float
      reprscope.metrics.matrix_mutual_information(z1, z2, alpha=1)
      reprscope.metrics.knn_accuracy(z, labels, k=20)
"""
from .functional import *  # noqa: F401,F403
from .functional import __all__  # noqa: F401
