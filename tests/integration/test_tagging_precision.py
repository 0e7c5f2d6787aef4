"""``TaggingClassifier``: a tagging folder in ``EncoderClassifier`` with a precision."""

import pytest
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from test_encoder_classifier_export import LABELS, _clip, _label_encoder, _trained_hparams

from speechbrain_slap.model_folder import export_tagging_model
from speechbrain_slap.tagging import TaggingClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagger")
    export_tagging_model(_trained_hparams(False), _label_encoder(), root / "t", title="tagger")
    return root / "t"


def _load(cls, folder, tmp_path, **kwargs):
    model = cls.from_hparams(source=str(folder), savedir=str(tmp_path / cls.__name__), **kwargs)
    model.hparams.label_encoder.expect_len(len(LABELS))
    return model


def test_fp32_is_the_stock_classifier_and_bf16_stays_close(folder, tmp_path):
    wavs = torch.stack([_clip(24000, seed=i) for i in range(3)])
    stock = _load(EncoderClassifier, folder, tmp_path).classify_batch(wavs)[0]
    tagger = _load(TaggingClassifier, folder, tmp_path)
    assert tagger.precision == "fp32"
    torch.testing.assert_close(tagger.classify_batch(wavs)[0], stock, atol=0, rtol=0)

    half = _load(TaggingClassifier, folder, tmp_path, precision="bf16")
    assert half.precision == "bf16"
    emb, ref = half.encode_batch(wavs)[:, 0], tagger.encode_batch(wavs)[:, 0]
    assert emb.dtype == torch.float32 and not torch.equal(emb, ref)
    cosine = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
    assert bool((cosine > 0.99).all()), cosine
    scores = half.classify_batch(wavs)[0]
    assert scores.dtype == torch.float32
    assert (scores - stock).abs().max() < 0.05
    # The stock class ignores run_opts["precision"]; the subclass applies it.
    by_run_opts = _load(TaggingClassifier, folder, tmp_path, run_opts={"precision": "bf16"})
    assert by_run_opts.precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        tagger.set_precision("half")

    # int8: the embedding model's linear layers (encoder and pooling) are int8 ones.
    tagger.set_precision("int8")
    assert not [m for m in tagger.mods.embedding_model.modules() if type(m) is torch.nn.Linear]
    emb = tagger.encode_batch(wavs)[:, 0]
    cosine = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
    assert emb.dtype == torch.float32 and not torch.equal(emb, ref)
    assert bool((cosine > 0.98).all()), cosine
    tagger.set_precision("fp32")
    torch.testing.assert_close(tagger.classify_batch(wavs)[0], stock, atol=0, rtol=0)
