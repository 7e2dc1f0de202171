"""clipsonic: text-to-audio synthesis learned from unlabeled videos through CLIP.

A self-contained reimplementation of CLIPSonic (Dong et al., ICASSP 2023). Importing the
package is cheap: it loads no weights, builds no extension and imports no Triton.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `clipsonic.Pipeline` without importing torch and the models until it is used.
    if name == "Pipeline":
        from clipsonic.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'clipsonic' has no attribute {name!r}")
