"""A tiny LAION-CLAP with seeded weights and the fixtures' small BPE vocabulary, for tests of what uses CLAP."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from clipsonic.clap import CLAP, CLAPConfig, save_clap
from clipsonic.roberta import MERGES_FILE, VOCAB_FILE, RobertaTokenizer
from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
from make_clap_fixtures import BPE_DIR, model_shapes, seeded_clap_state_dict  # noqa: E402


def seeded_model(config: CLAPConfig, seed: int, tokenizer: RobertaTokenizer | None = None) -> CLAP:
    model = CLAP(config, tokenizer).eval()
    model.load_state_dict(seeded_clap_state_dict(model_shapes(config), seed))
    return model


def tiny_clap(joint_dim: int = 32, seed: int = 1) -> CLAP:
    """The ``tiny`` preset (`joint_dim`-d embeddings) with its tokenizer."""
    return seeded_model(CLAPConfig.preset("tiny", joint_dim=joint_dim), seed, RobertaTokenizer.from_dir(BPE_DIR))


def save_tiny_clap(folder: Path, joint_dim: int = 32, seed: int = 1) -> Path:
    """`tiny_clap` as our checkpoint ``folder/clap.pt``, the tokenizer files beside it (as for LAION's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (VOCAB_FILE, MERGES_FILE):
        shutil.copy(BPE_DIR / name, folder / name)
    return save_clap(folder / "clap.pt", tiny_clap(joint_dim, seed))
