"""Hot-path operations behind one dispatch point.

Each op has a plain-PyTorch reference with the same signature; faster implementations
(Triton on CUDA, C++/CUDA extensions) register in `clipsonic.ops.dispatch`, which picks one
per call: the `impl` argument, else ``$CLIPSONIC_OPS=reference``, else the fastest available.
Importing this package imports neither Triton nor any extension.
"""

from clipsonic.ops.dispatch import IMPLEMENTATIONS, anti_alias_activation, attention, group_norm

__all__ = ["IMPLEMENTATIONS", "anti_alias_activation", "attention", "group_norm"]
