"""`clipsonic.variants`: one table of the paper's variants, one batched query -> embedding step."""

import numpy as np
import pytest
import torch

from clipsonic import clip
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.prior import DiffusionPrior, PriorConfig, text_condition
from clipsonic.tokenizer import tokenize
from clipsonic.variants import (CLAP_TEXT, CONDITIONS, IMAGE, TEXT, VARIANTS, available, default_variant, label_texts,
                                missing, query_embeddings)
from tiny_clap import tiny_clap


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig.preset("tiny", text_width=64, text_mlp_width=256)).eval()
    prior = DiffusionPrior(PriorConfig.preset("tiny"), origin="trained").eval()
    return model, prior


@pytest.fixture(scope="module")
def clap():
    return tiny_clap()


def test_the_table_is_the_papers():
    assert list(VARIANTS) == ["iq", "zs", "pd", "sd", "tta", "clap-tta"]
    assert {name for name, v in VARIANTS.items() if v.query == IMAGE} == {"iq"}
    assert {name for name, v in VARIANTS.items() if v.trained_on == TEXT} == {"tta"}
    assert {name: v.embedded_by for name, v in VARIANTS.items() if v.trained_on == CLAP_TEXT} == {"clap-tta": "clap"}
    assert {v.trained_on for v in VARIANTS.values()} == set(CONDITIONS.values())
    assert VARIANTS["clap-tta"].short_name == "CLAP-TTA" and VARIANTS["clap-tta"].without_pairs == "no"
    assert {name: v.prior for name, v in VARIANTS.items() if v.prior} == {"pd": "laion", "sd": "trained"}
    assert VARIANTS["sd"].short_name == "CLIPSonic-SD" and VARIANTS["zs"].without_pairs == "yes"


def test_what_each_variant_needs(models):
    _, prior = models
    assert available(IMAGE) == ["iq", "zs"]
    assert available(IMAGE, prior) == ["iq", "zs", "sd"]
    assert available(TEXT) == ["tta"]
    assert default_variant(TEXT, IMAGE) == "zs" and default_variant(TEXT, IMAGE, prior) == "sd"
    assert default_variant(IMAGE, IMAGE, prior) == "iq" and default_variant(TEXT, TEXT) == "tta"
    need = missing(VARIANTS["sd"], IMAGE)
    assert isinstance(need, ParameterError) and need.for_cli().startswith("variant sd needs a diffusion prior (--prior)")
    assert "LAION's pretrained prior, but the prior given is a prior from train-prior" in str(
        missing(VARIANTS["pd"], IMAGE, prior))


def test_clap_tta_needs_its_clap(clap):
    assert available(CLAP_TEXT) == [] and available(CLAP_TEXT, clap=clap) == ["clap-tta"]
    # The UNet's variant even without its CLAP, so that running it says what is missing.
    assert default_variant(TEXT, CLAP_TEXT) == "clap-tta" == default_variant(TEXT, CLAP_TEXT, clap=clap)
    need = missing(VARIANTS["clap-tta"], CLAP_TEXT)
    assert isinstance(need, ParameterError) and need.for_cli().startswith("variant clap-tta needs the LAION-CLAP "
                                                                          "model (--clap)")
    assert "needs a UNet trained on clap-text embeddings" in str(missing(VARIANTS["clap-tta"], TEXT, clap=clap))
    with pytest.raises(ClipsonicError, match="no variant takes a image query"):
        default_variant(IMAGE, CLAP_TEXT)


def test_label_texts_put_labels_in_the_variants_caption():
    assert label_texts("clap-tta", ["rain", "a bell"], "a photo of {label}") == ["the sound of rain",
                                                                                "the sound of a bell"]
    for name in ("zs", "sd", "tta"):
        assert label_texts(name, ["rain"], "a photo of {label}") == ["a photo of rain"]
    with pytest.raises(ClipsonicError, match="variant iq takes images"):
        label_texts("iq", ["rain"], "a photo of {label}")


def test_clap_tta_queries_are_clap_text_embeddings(clap):
    texts = ["the sound of rain", "the sound of bell", "the sound of rain"]
    with torch.no_grad():
        expected = clap.embed_text(texts)
    ours = query_embeddings("clap-tta", None, texts=texts, clap=clap, batch=2)
    assert ours.shape == (3, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ParameterError, match=r"variant clap-tta needs the LAION-CLAP model \(clap\)"):
        query_embeddings("clap-tta", None, texts=texts)
    with pytest.raises(ClipsonicError, match="variant clap-tta takes texts"):
        query_embeddings("clap-tta", None, images=[np.zeros((8, 8, 3), np.uint8)], clap=clap)
    with pytest.raises(ClipsonicError, match="a text query is empty"):
        query_embeddings("clap-tta", None, texts=["rain", ""], clap=clap)


def test_text_variants_are_the_text_embedding_or_the_priors_draw(models):
    model, prior = models
    texts = ["a photo of rain", "a photo of bell", "a photo of rain"]
    with torch.no_grad():
        expected = model.encode_text(tokenize(texts)).float()
    zs = query_embeddings("zs", model, texts=texts, batch=2)
    torch.testing.assert_close(zs, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(query_embeddings("tta", model, texts=texts), zs)
    sd = query_embeddings("sd", model, texts=texts, prior=prior, seed=5, batch=2, prior_steps=4)
    with torch.no_grad():  # the draws of queries start..start+batch-1 use the seed seed + start
        embed, encodings = text_condition(model, tokenize(texts[2:]))
        last = prior.sample(embed, encodings, 2, 4, torch.Generator().manual_seed(5 + 2)).float()
    assert sd.shape == (3, 64)
    torch.testing.assert_close(sd[2:], last)
    again = query_embeddings("sd", model, texts=texts, prior=prior, seed=5, batch=2, prior_steps=4)
    assert torch.equal(sd, again)


def test_image_variant_from_pictures_or_known_embeddings(models):
    model, _ = models
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        expected = model.encode_image(torch.stack([clip.preprocess_image(p, 32) for p in pictures])).float()
    torch.testing.assert_close(query_embeddings("iq", model, images=pictures, batch=2), expected, rtol=1e-5,
                               atol=1e-6)
    assert torch.equal(query_embeddings("iq", model, image_embeddings=expected), expected)


def test_wrong_queries_are_clear(models):
    model, prior = models
    with pytest.raises(ClipsonicError, match="unknown variant 'xx'"):
        query_embeddings("xx", model, texts=["rain"])
    with pytest.raises(ClipsonicError, match="variant iq takes images"):
        query_embeddings("iq", model, texts=["rain"])
    with pytest.raises(ClipsonicError, match="variant zs takes texts"):
        query_embeddings("zs", model, images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ClipsonicError, match="a text query is empty"):
        query_embeddings("zs", model, texts=["rain", " "])
    with pytest.raises(ParameterError, match=r"variant sd needs a diffusion prior \(prior\)"):
        query_embeddings("sd", model, texts=["rain"])
