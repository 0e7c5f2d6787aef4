"""Tests for lobes/text_encoder.py: offline MiniLM, padding-free MAP pooling, freezing, yaml."""

import os
import pickle

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from torch.nn.functional import cosine_similarity

from speechbrain_slap.lobes.pooling import MAPooling
from speechbrain_slap.lobes.text_encoder import HFTextEncoder, packaged_minilm_path

MINILM_WIDTH = 384
LONG_SENTENCE = (
    "A crowded train station at rush hour with announcements over the loudspeaker, "
    "footsteps echoing on the tiles and a violinist playing near the ticket machines."
)


@pytest.fixture(scope="module")
def minilm():
    """The packaged MiniLM with a MAP head, in eval mode (shared, used without grad)."""
    torch.manual_seed(0)
    return HFTextEncoder(packaged_minilm_path(), num_heads=12).eval()


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory):
    """A random 3-layer ModernBERT saved to a local folder with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    folder = tmp_path_factory.mktemp("tiny_modernbert")
    config = ModernBertConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        pad_token_id=0,
        bos_token_id=101,
        cls_token_id=101,
        eos_token_id=102,
        sep_token_id=102,
        local_attention=16,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(folder)
    return str(folder)


def mean_pooled_states(encoder, texts):
    """Masked mean of the HF model's last_hidden_state (no MAP head)."""
    batch = encoder.tokenize(texts)
    states = encoder.model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return (states * mask).sum(1) / mask.sum(1)


def test_packaged_minilm_loads_offline(minilm):
    """The packaged MiniLM is a local BERT folder and loads with the hub offline."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.path.isfile(os.path.join(packaged_minilm_path(), "model.safetensors"))
    assert minilm.model.config.model_type == "bert"
    assert minilm.model.config.hidden_size == MINILM_WIDTH == minilm.output_dim
    assert minilm.model.dtype == torch.float32


@torch.no_grad()
def test_minilm_has_pretrained_weights(minilm):
    """Paraphrases are closer than unrelated sentences in the model's own states."""
    dog, dog_paraphrase, market = mean_pooled_states(
        minilm, ["A dog is barking.", "A dog barks loudly.", "The stock market fell today."]
    )
    close = cosine_similarity(dog, dog_paraphrase, dim=0)
    far = cosine_similarity(dog, market, dim=0)
    assert close > far + 0.2, (close, far)


@torch.no_grad()
def test_embeddings_tell_sentences_apart(minilm):
    """Unrelated sentences differ; the same sentence gives the same embedding."""
    embeddings = minilm(["A dog is barking.", "The stock market fell today.", "A dog is barking."])
    assert embeddings.shape == (3, MINILM_WIDTH)
    assert cosine_similarity(embeddings[0], embeddings[1], dim=0) < 0.99
    torch.testing.assert_close(embeddings[0], embeddings[2], atol=0, rtol=0)
    torch.testing.assert_close(minilm(["A dog is barking."])[0], embeddings[0])


@torch.no_grad()
def test_padding_is_excluded(minilm):
    """A sentence alone equals the same sentence batched with a much longer one."""
    short = "A dog barks."
    batch = minilm.tokenize([short, LONG_SENTENCE])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum() // 3
    alone = minilm([short])[0]
    batched = minilm([short, LONG_SENTENCE])[0]
    assert (alone - batched).abs().max() <= 1e-5


@torch.no_grad()
def test_matches_map_over_unpadded_states(minilm):
    """The embedding is MAPooling over exactly the sentence's token states."""
    batch = minilm.tokenize(["Birds sing at dawn.", LONG_SENTENCE])
    states = minilm.model(**batch).last_hidden_state
    embeddings = minilm.forward_tokens(**batch)
    for b, count in enumerate(batch["attention_mask"].sum(1).tolist()):
        tokens = states[b, :count]
        expected = minilm.pooling.forward_packed(tokens, torch.tensor([0, count]))[0]
        torch.testing.assert_close(embeddings[b], expected, atol=1e-5, rtol=1e-5)


def test_tokenize_truncates_and_pads_right():
    """Sentences are cut to max_length tokens and padded on the right."""
    encoder = HFTextEncoder(packaged_minilm_path(), max_length=8)
    batch = encoder.tokenize(["Hi.", LONG_SENTENCE])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert encoder(["Hi.", LONG_SENTENCE]).shape == (2, MINILM_WIDTH)


def test_freeze_trains_only_the_head():
    """freeze=True: no grads into the HF model, MAP head trains, model stays in eval."""
    encoder = HFTextEncoder(packaged_minilm_path(), freeze=True).train()
    assert encoder.training and encoder.pooling.training
    assert not encoder.model.training
    assert not any(m.training for m in encoder.model.modules())
    encoder(["A dog is barking.", LONG_SENTENCE]).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.model.parameters())
    head = list(encoder.pooling.parameters())
    assert all(p.grad is not None for p in head)
    assert sum(p.grad.abs().sum() for p in head) > 0


def test_unfrozen_model_gets_gradients_everywhere():
    """freeze=False: every HF parameter gets a gradient (no unused pooler for DDP)."""
    encoder = HFTextEncoder(packaged_minilm_path(), freeze=False).train()
    assert encoder.model.training
    encoder(["A dog is barking.", LONG_SENTENCE]).sum().backward()
    unused = [n for n, p in encoder.model.named_parameters() if p.grad is None]
    assert unused == []
    assert not any(key.startswith("model.pooler") for key in encoder.state_dict())


def test_output_dim_projection():
    """output_dim adds a bias-free projection; output_dim == hidden size adds none."""
    encoder = HFTextEncoder(packaged_minilm_path(), output_dim=128, num_heads=6)
    assert encoder(["A dog barks.", LONG_SENTENCE]).shape == (2, 128)
    assert encoder.projection.weight.shape == (128, MINILM_WIDTH)
    assert encoder.projection.bias is None
    same = HFTextEncoder(packaged_minilm_path(), output_dim=MINILM_WIDTH)
    assert isinstance(same.projection, torch.nn.Identity)
    assert same(["A dog barks."]).shape == (1, MINILM_WIDTH)


def test_cache_of_frozen_states_gives_the_same_embeddings_and_gradients():
    """cache_size > 0 with freeze: same output and head gradients, Transformer skipped."""
    texts = ["A dog barks twice.", LONG_SENTENCE, "Rain.", "A dog barks twice."]
    torch.manual_seed(0)
    plain = HFTextEncoder(packaged_minilm_path(), output_dim=32, num_heads=4, freeze=True)
    torch.manual_seed(0)
    cached = HFTextEncoder(
        packaged_minilm_path(), output_dim=32, num_heads=4, freeze=True, cache_size=2
    )
    calls = []
    cached.model.register_forward_hook(lambda m, a, o: calls.append(a))
    computed = []
    for batch in (texts, texts[::-1], texts[1:3]):
        expected, got = plain(list(batch)), cached(list(batch))
        assert torch.allclose(got, expected, atol=1e-5)
        expected.sum().backward()
        got.sum().backward()
        computed.append(len(calls))
    for a, b in zip(plain.pooling.parameters(), cached.pooling.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4)
    # One model call per sentence not kept; the cache keeps the 2 used last (LRU):
    # batch 1 computes 3, batch 2 only the long one (evicted), batch 3 only "Rain." (evicted).
    assert computed == [3, 4, 5] and len(cached._states) == 2
    # A sentence's states do not depend on its batch.
    alone = cached.model(**cached.tokenize([texts[2]])).last_hidden_state[0]
    assert torch.equal(cached._states[texts[2]], alone.detach())
    unfrozen = HFTextEncoder(packaged_minilm_path(), freeze=False, cache_size=8)
    assert unfrozen.cache_size == 0  # a trained encoder's states change: nothing is kept
    with pytest.raises(ValueError, match="cache_size must be >= 0"):
        HFTextEncoder(packaged_minilm_path(), freeze=True, cache_size=-1)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str"):
        cached(["Rain.", 3])


def test_precompute_fills_the_cache_in_batches():
    """precompute: each new sentence computed once, in batches; the embeddings then equal
    the uncached ones and no Transformer pass runs; the same set gives the same bits."""
    texts = ["A dog barks twice.", LONG_SENTENCE, "Rain.", "A dog barks twice.", "Wind."]
    torch.manual_seed(0)
    plain = HFTextEncoder(packaged_minilm_path(), output_dim=32, num_heads=4, freeze=True)
    encoders = []
    for _ in range(2):
        torch.manual_seed(0)
        encoders.append(
            HFTextEncoder(
                packaged_minilm_path(), output_dim=32, num_heads=4, freeze=True, cache_size=8
            )
        )
    cached, again = encoders
    calls = []
    cached.model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape if a else None))
    assert cached.precompute(texts, batch_size=3) == 4
    assert len(calls) == 2  # 4 distinct sentences in batches of 3
    assert cached.precompute(texts[:2]) == 0
    got = cached(texts)
    assert len(calls) == 2  # all from the cache
    torch.testing.assert_close(got, plain(texts), atol=1e-5, rtol=1e-5)
    again.precompute(list(reversed(texts)), batch_size=3)  # same set, other order
    for text in texts:
        assert torch.equal(cached._states[text], again._states[text])
    with pytest.raises(ValueError, match="do not fit the cache"):
        cached.precompute([f"sentence {i}" for i in range(5)])
    with pytest.raises(ValueError, match="cache_size > 0"):
        plain.precompute(texts)


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ("A dog barks.", "non-empty list of str"),
        ([], "non-empty list of str"),
        (["A dog barks.", 3], r"texts\[1\] must be a str"),
        (["A dog barks.", "Rain.", None], r"texts\[2\] must be a str"),
    ],
)
def test_bad_texts_raise(minilm, texts, match):
    """Anything but a non-empty list of str raises a ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        minilm(texts)


def test_forward_tokens_rejects_left_padding(minilm):
    """A left-padded attention mask is refused (its tokens are not a prefix)."""
    input_ids = torch.tensor([[0, 101, 2000, 102]])
    with pytest.raises(ValueError, match="right-padded"):
        minilm.forward_tokens(input_ids, torch.tensor([[0, 1, 1, 1]]))


@torch.no_grad()
def test_bf16_autocast(minilm):
    """Under CPU bf16 autocast the embeddings stay close to fp32."""
    texts = ["A dog is barking.", LONG_SENTENCE]
    reference = minilm(texts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = minilm(texts)
    assert mixed.shape == reference.shape and torch.isfinite(mixed).all()
    assert (cosine_similarity(mixed.float(), reference, dim=-1) > 0.99).all()


@torch.no_grad()
def test_state_dict_and_pickle_round_trip(minilm):
    """A fresh encoder loading the state_dict, and a pickled copy, give the same output."""
    texts = ["A dog is barking.", LONG_SENTENCE]
    expected = minilm(texts)
    torch.manual_seed(1)
    fresh = HFTextEncoder(packaged_minilm_path()).eval()
    assert not torch.allclose(fresh(texts), expected)
    fresh.load_state_dict(minilm.state_dict())
    torch.testing.assert_close(fresh(texts), expected, atol=0, rtol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(minilm))(texts), expected)


def test_hyperpyyaml_apply_source():
    """The documented yaml form builds the encoder from the packaged MiniLM."""
    hparams = load_hyperpyyaml(
        """
        text_encoder: !new:speechbrain_slap.lobes.text_encoder.HFTextEncoder
            source: !apply:speechbrain_slap.lobes.text_encoder.packaged_minilm_path []
            output_dim: 128
            num_heads: 6
            freeze: True
        """
    )
    encoder = hparams["text_encoder"]
    assert isinstance(encoder, HFTextEncoder) and isinstance(encoder.pooling, MAPooling)
    assert encoder.freeze and encoder.model.config.hidden_size == MINILM_WIDTH
    assert encoder(["A dog barks."]).shape == (1, 128)


@torch.no_grad()
def test_local_modernbert_folder(tiny_modernbert):
    """A ModernBERT (no model.encoder.layer) loads from a local folder and excludes padding."""
    encoder = HFTextEncoder(tiny_modernbert, num_heads=4).eval()
    assert encoder.model.config.model_type == "modernbert"
    batched = encoder(["A dog barks.", LONG_SENTENCE])
    assert batched.shape == (2, 64)
    assert (encoder(["A dog barks."])[0] - batched[0]).abs().max() <= 1e-5
