"""The demo: procedural data, the small bundle shipped so `sample` works offline, and its gate.

`synthetic` (the sixteen-class audio-visual data as real videos), `contrastive` and `recipe` (the
demo CLIP and the bundle's settings), `embedding` (the demo VGGish behind the demo FAD),
`retrain` (rebuild the bundle from nothing), `gate` (does it generate what it learned).
"""

from clipsonic.demo.gate import (GATE_THRESHOLD, GATE_VARIANTS, LEVEL_TOLERANCE_DB, REAL, SPREAD_RATIO, NearestCentroid,
                                 fad_line, gate_table, gate_vggish, level_passed, load_for_gate, mel_features,
                                 quality_gate)
from clipsonic.demo.recipe import CAPTION_TEMPLATES, PROMPT_SIMILARITY_FLOOR, DemoRecipe, demo_vocabulary
from clipsonic.demo.retrain import read_summary, record_gate, retrain

__all__ = ["CAPTION_TEMPLATES", "GATE_THRESHOLD", "GATE_VARIANTS", "LEVEL_TOLERANCE_DB", "PROMPT_SIMILARITY_FLOOR",
           "REAL", "SPREAD_RATIO", "DemoRecipe", "NearestCentroid", "demo_vocabulary", "fad_line", "gate_table",
           "gate_vggish", "level_passed", "load_for_gate", "mel_features", "quality_gate", "read_summary",
           "record_gate", "retrain"]
