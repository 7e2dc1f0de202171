"""C++ and CUDA sources of the extensions; installed as clipsonic.csrc so a wheel carries them."""
