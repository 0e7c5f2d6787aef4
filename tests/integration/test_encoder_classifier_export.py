"""A SLAP tagging model exported by ``export_tagging_model`` loads in SpeechBrain's stock class.

Only ``speechbrain.inference.classifiers.EncoderClassifier.from_hparams`` loads
the folder (no speechbrain_slap loader); its ``classify_file`` and
``classify_batch`` scores are compared with the scores computed directly with
the trained modules. The weights are moved away from their initialisation
first, so a load that silently kept fresh weights would fail the comparison.
The last test loads the same folder by hub id, from a hub cache it builds,
through ``speechbrain_slap.tagging.TaggingClassifier``.
"""

import hashlib
import shutil

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.classifiers import EncoderClassifier

from speechbrain_slap.lobes.audio_encoder import SLAPAudioEncoder
from speechbrain_slap.lobes.classifier import LinearClassifier, SLAPEmbedder
from speechbrain_slap.lobes.features import SLAPFbank
from speechbrain_slap.lobes.pooling import MAPooling
from speechbrain_slap.model_folder import export_tagging_model

LABELS = ["dog", "rain", "siren", "speech, man speaking"]
ARCH = {"embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_hidden": 64, "local_window": 48}
HOP = 160


def _trained_hparams(multilabel: bool) -> dict:
    """Tiny tagging modules whose weights are moved away from their initialisation."""
    torch.manual_seed(0)
    encoder = SLAPAudioEncoder(n_mels=64, local_attention=True, **ARCH)
    pooling = MAPooling(input_size=32, num_heads=2)
    hparams = {
        "sample_rate": 16000,
        "n_mels": 64,
        "feature_mean": -20.0,
        "feature_std": 10.0,
        "local_attention": True,
        "multilabel": multilabel,
        **ARCH,
        "compute_features": SLAPFbank(mean=-20.0, std=10.0),
        "embedding_model": SLAPEmbedder(encoder, pooling),
        "classifier": LinearClassifier(32, len(LABELS), output="logits"),
    }
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key in ("embedding_model", "classifier"):
            for param in hparams[key].parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return hparams


@torch.no_grad()
def _direct_scores(hparams: dict, wav: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Scores of one clip alone through the trained modules: features, embedder, head."""
    for key in ("embedding_model", "classifier"):
        hparams[key].eval()
    feats = hparams["compute_features"](wav[None])
    logits = hparams["classifier"](hparams["embedding_model"](feats, torch.ones(1)))[0, 0]
    return torch.sigmoid(logits) if multilabel else torch.log_softmax(logits, dim=-1)


def _label_encoder() -> CategoricalEncoder:
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(LABELS)
    return encoder


def _clip(n_samples: int, seed: int) -> torch.Tensor:
    time = torch.arange(n_samples) / 16000
    noise = torch.randn(n_samples, generator=torch.Generator().manual_seed(seed))
    return 0.2 * torch.sin(2 * torch.pi * (200 + 150 * seed) * time) + 0.05 * noise


@pytest.fixture(params=[False, True], ids=["single_label", "multi_label"])
def exported(request, tmp_path):
    """(hparams, loaded EncoderClassifier, folder): exported, moved elsewhere, then loaded."""
    multilabel = request.param
    hparams = _trained_hparams(multilabel)
    export_tagging_model(hparams, _label_encoder(), tmp_path / "export", title="toy tagger")
    folder = tmp_path / "moved" / "tagger"
    folder.parent.mkdir()
    shutil.move(tmp_path / "export", folder)  # the folder must not depend on where it was written
    classifier = EncoderClassifier.from_hparams(
        source=str(folder), savedir=str(tmp_path / "savedir"), run_opts={"device": "cpu"}
    )
    classifier.hparams.label_encoder.expect_len(len(LABELS))
    return hparams, classifier, folder, multilabel


def test_folder_contents(exported):
    """The files of the contract; SHA256SUMS matches hashlib; the model card names the task."""
    _, _, folder, multilabel = exported
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "hyperparams.yaml",
        "embedding_model.ckpt",
        "classifier.ckpt",
        "label_encoder.ckpt",
        "SHA256SUMS",
        "README.md",
    }
    sums = dict(line.split("  ")[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == names - {"SHA256SUMS", "README.md"}
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    text = (folder / "hyperparams.yaml").read_text()
    for key in ("compute_features", "mean_var_norm", "embedding_model", "classifier"):
        assert f"\n{key}: !new:" in text
    for key in ("label_encoder", "modules", "pretrainer"):
        assert f"\n{key}:" in text
    card = (folder / "README.md").read_text()
    assert card.startswith("# toy tagger") and "EncoderClassifier.from_hparams" in card
    assert ("multi-label" if multilabel else "single-label") in card


def test_classify_file_matches_the_trained_modules(exported, tmp_path):
    """classify_file on a 1.3 s wav: shapes, a known label, scores equal to the direct ones."""
    hparams, classifier, _, multilabel = exported
    wav = _clip(20800, seed=3)
    path = tmp_path / "clip.wav"
    soundfile.write(str(path), wav.numpy(), 16000, subtype="FLOAT")
    out_prob, score, index, text_lab = classifier.classify_file(str(path))
    assert out_prob.shape == (1, len(LABELS))
    assert score.shape == (1,) and index.shape == (1,)
    assert len(text_lab) == 1 and text_lab[0] in LABELS
    expected = _direct_scores(hparams, wav, multilabel)
    torch.testing.assert_close(out_prob[0], expected, atol=1e-5, rtol=1e-5)
    assert int(index[0]) == int(expected.argmax())
    assert text_lab[0] == LABELS[int(expected.argmax())]
    assert float(score[0]) == pytest.approx(float(expected.max()), abs=1e-5)
    if multilabel:
        assert bool(((out_prob >= 0) & (out_prob <= 1)).all())
    else:
        assert float(out_prob.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_classify_batch_matches_each_clip_alone(exported):
    """A padded batch of 3 clips (0.5-2 s): each row equals that clip scored alone."""
    hparams, classifier, _, multilabel = exported
    lengths = [32000, 8000, 19200]  # multiples of the hop: relative lengths are exact
    clips = [_clip(n, seed=i) for i, n in enumerate(lengths)]
    wavs = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    wav_lens = torch.tensor([n / wavs.shape[1] for n in lengths])
    out_prob, score, index, text_lab = classifier.classify_batch(wavs, wav_lens)
    assert out_prob.shape == (3, len(LABELS)) and score.shape == (3,) and index.shape == (3,)
    assert len(text_lab) == 3 and set(text_lab) <= set(LABELS)
    expected = torch.stack([_direct_scores(hparams, clip, multilabel) for clip in clips])
    torch.testing.assert_close(out_prob, expected, atol=1e-5, rtol=1e-4)
    assert text_lab == [LABELS[i] for i in expected.argmax(dim=-1).tolist()]
    embeddings = classifier.encode_batch(wavs, wav_lens)
    assert embeddings.shape == (3, 1, 32)
    assert np.isfinite(embeddings.numpy()).all()


def test_export_refuses_a_label_count_mismatch(tmp_path):
    hparams = _trained_hparams(multilabel=False)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(LABELS[:3])
    with pytest.raises(ValueError, match="3 labels but the classifier has 4 outputs"):
        export_tagging_model(hparams, encoder, tmp_path / "bad")


def test_tagging_interface_loads_a_hub_id_with_the_same_scores(exported, tmp_path):
    """``TaggingClassifier.from_hparams("org/name")`` on a hub cache built here, offline:
    the files are checked first, and the scores are the stock class's on the local folder."""
    from speechbrain.utils.fetching import FetchConfig

    from speechbrain_slap.model_folder import ModelFolderError
    from speechbrain_slap.tagging import TaggingClassifier

    _, classifier, folder, _ = exported
    revision = "89abcdef" * 5
    repo = tmp_path / "hub" / "models--org--slap-tagger"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)
    options = {
        "huggingface_cache_dir": tmp_path / "hub",
        "fetch_config": FetchConfig(allow_network=False),
    }
    hub = TaggingClassifier.from_hparams(
        source="org/slap-tagger", savedir=tmp_path / "fetched", **options
    )
    assert isinstance(hub, EncoderClassifier)
    clips = [_clip(16000, seed=1), _clip(24000, seed=2)]
    wavs = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    wav_lens = torch.tensor([16000 / 24000, 1.0])
    expected = classifier.classify_batch(wavs, wav_lens)
    got = hub.classify_batch(wavs, wav_lens)
    torch.testing.assert_close(got[0], expected[0])
    assert got[3] == expected[3]
    local = TaggingClassifier.from_hparams(source=str(folder))  # a local folder, checked
    torch.testing.assert_close(local.classify_batch(wavs, wav_lens)[0], expected[0])

    with open(repo / "snapshots" / revision / "classifier.ckpt", "ab") as fout:
        fout.write(b"\0")
    with pytest.raises(ModelFolderError, match=r"classifier.ckpt: SHA-256 mismatch"):
        TaggingClassifier.from_hparams(source="org/slap-tagger", **options)
