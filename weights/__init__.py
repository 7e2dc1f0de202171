"""Weight files and their manifest; installed as clipsonic.weights so a wheel carries them."""
