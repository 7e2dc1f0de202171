"""Measuring quality as the paper does: `evaluate` (FAD with VGGish, Tables 1-2, Figure 3)."""
