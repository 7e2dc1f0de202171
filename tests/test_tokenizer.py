import json
import logging

import pytest
import torch

from clipsonic import tokenizer
from clipsonic.manifest import sha256_file
from conftest import FIXTURES

RECORDS = json.loads((FIXTURES / "clip_tokens.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("record", RECORDS, ids=[repr(r["text"][:24]) for r in RECORDS])
def test_tokens_match_openai(record):
    expected = torch.zeros(77, dtype=torch.long)
    expected[:len(record["tokens"])] = torch.tensor(record["tokens"])
    assert torch.equal(tokenizer.tokenize([record["text"]])[0], expected)


@pytest.mark.parametrize("record", RECORDS, ids=[repr(r["text"][:24]) for r in RECORDS])
def test_decode_matches_openai(record):
    assert tokenizer.default_tokenizer().decode(record["tokens"][1:-1]) == record["decoded"]


def test_fixture_covers_the_tricky_cases():
    texts = [r["text"] for r in RECORDS]
    assert any(r["full_length"] > 77 for r in RECORDS)
    assert any("&amp;" in t for t in texts) and any("🎵" in t for t in texts) and "" in texts


def test_truncation_keeps_the_end_token_and_warns(caplog):
    text = "the sound of rain on a tin roof " * 12
    with caplog.at_level(logging.WARNING, logger="clipsonic.tokenizer"):
        tokens = tokenizer.tokenize(text)
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == tokenizer.SOT_TOKEN and tokens[0, -1] == tokenizer.EOT_TOKEN
    assert "cut to 77" in caplog.text
    with pytest.raises(ValueError, match="more than the context of 77"):
        tokenizer.tokenize(text, truncate=False)


def test_special_token_ids_and_shapes():
    tokens = tokenizer.tokenize(["a photo of a dog", "rain"], context_length=16)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    assert tokens[:, 0].tolist() == [49406, 49406]
    assert tokens[1, :3].tolist() == [49406, tokenizer.default_tokenizer().encoder["rain</w>"], 49407]
    assert len(tokenizer.default_tokenizer().encoder) == 49408


def test_module_decode_strips_specials_and_padding():
    tokens = tokenizer.tokenize(["Hello,   World!", "a photo of rain"])
    assert tokenizer.decode(tokens) == ["hello , world !", "a photo of rain"]
    assert tokenizer.decode(tokens[1]) == "a photo of rain"


def test_vocabulary_asset_is_openais():
    from importlib import resources

    with resources.as_file(resources.files("clipsonic.assets") / tokenizer.VOCAB_FILE) as path:
        assert sha256_file(path) == tokenizer.VOCAB_SHA256
