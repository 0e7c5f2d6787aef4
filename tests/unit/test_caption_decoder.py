"""Tests for lobes/caption_decoder.py: masks, packing, loss, decoding, tokenizer."""

import csv
import itertools
import math

import pytest
import torch
from speechbrain.tokenizers.SentencePiece import SentencePiece

from speechbrain_slap.lobes.caption_decoder import (
    BOS_INDEX,
    EOS_INDEX,
    PAD_INDEX,
    UNK_INDEX,
    CaptionDecoder,
    caption_loss,
    caption_prompt_ids,
    check_decoder_captions,
    decode_ids,
    encode_captions,
    time_embedding,
    train_caption_tokenizer,
)
from speechbrain_slap.lobes.packing import unpack_tokens

VOCAB, AUDIO_DIM, MAX_LENGTH = 24, 16, 10
SEQLENS = [7, 3, 5]


def make_decoder(seed=0, d_model=32, num_layers=2, dropout=0.0, eos_bias=0.0, positions=False):
    """A small decoder with non-trivial weights (random biases, larger scale)."""
    torch.manual_seed(seed)
    decoder = CaptionDecoder(
        VOCAB,
        AUDIO_DIM,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=4,
        ffn_dim=2 * d_model,
        max_length=MAX_LENGTH,
        dropout=dropout,
        memory_time_positions=positions,
    )
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if "norm" not in name:
                param.copy_(0.3 * torch.randn_like(param))
        decoder.head.bias[EOS_INDEX] += eos_bias
    return decoder.eval()


def padded_audio(seqlens=SEQLENS, garbage=0.0):
    """Random ``(B, L, AUDIO_DIM)`` audio, its mask, and the packed equivalent."""
    audio = garbage * torch.randn(len(seqlens), max(seqlens), AUDIO_DIM)
    mask = torch.arange(max(seqlens))[None, :] < torch.tensor(seqlens)[:, None]
    packed = torch.randn(sum(seqlens), AUDIO_DIM)
    audio[mask] = packed
    cu_seqlens = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(seqlens), 0)
    return audio, mask, packed, cu_seqlens


def random_tokens(batch, length):
    """``(batch, length)`` BOS-prefixed ids of ordinary (non-special) tokens."""
    tokens = torch.randint(4, VOCAB, (batch, length))
    tokens[:, 0] = BOS_INDEX
    return tokens


@torch.no_grad()
def test_self_attention_is_causal():
    """Changing tokens after position t never changes logits at positions <= t."""
    decoder = make_decoder()
    audio, mask, _, _ = padded_audio()
    tokens = random_tokens(len(SEQLENS), 8)
    logits = decoder(tokens, audio, mask)
    for t in range(7):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(4, VOCAB, changed[:, t + 1 :].shape)
        changed[:, t + 1] = (tokens[:, t + 1] + 1 - 4) % (VOCAB - 4) + 4  # surely different
        other = decoder(changed, audio, mask)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert (other[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-3


@torch.no_grad()
def test_padded_batch_equals_each_clip_alone():
    """Batched logits (garbage in padding rows) equal each clip decoded alone, unpadded."""
    decoder = make_decoder()
    audio, mask, _, _ = padded_audio(garbage=100.0)
    tokens = random_tokens(len(SEQLENS), 6)
    logits = decoder(tokens, audio, mask)
    for b, n in enumerate(SEQLENS):
        alone = decoder(tokens[b : b + 1], audio[b : b + 1, :n], mask[b : b + 1, :n])
        torch.testing.assert_close(logits[b : b + 1], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_rows_and_other_clips_do_not_matter():
    """Rows where audio_mask is False and other clips' audio never change a clip's logits."""
    decoder = make_decoder()
    audio, mask, _, _ = padded_audio()
    tokens = random_tokens(len(SEQLENS), 6)
    logits = decoder(tokens, audio, mask)

    noisy = torch.where(mask[..., None], audio, 50.0 * torch.randn_like(audio))
    torch.testing.assert_close(decoder(tokens, noisy, mask), logits, atol=1e-5, rtol=1e-5)

    perturbed = audio.clone()
    perturbed[0] += torch.randn_like(perturbed[0])
    other = decoder(tokens, perturbed, mask)
    torch.testing.assert_close(other[1:], logits[1:], atol=1e-5, rtol=1e-5)
    assert (other[0] - logits[0]).abs().max() > 1e-3


@torch.no_grad()
def test_forward_packed_equals_forward():
    """forward_packed (and forward with cu_seqlens) equals forward on the padded batch."""
    decoder = make_decoder()
    audio, mask, packed, cu_seqlens = padded_audio(garbage=10.0)
    tokens = random_tokens(len(SEQLENS), 6)
    torch.testing.assert_close(
        decoder.forward_packed(tokens, packed, cu_seqlens),
        decoder(tokens, audio, mask),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(  # the DDP-friendly entry point
        decoder(tokens, packed, cu_seqlens=cu_seqlens),
        decoder(tokens, audio, mask),
        atol=1e-5,
        rtol=1e-5,
    )
    padded, unpacked_mask = unpack_tokens(packed, cu_seqlens)
    assert torch.equal(unpacked_mask, mask)
    assert torch.equal(padded[mask], packed) and bool(padded[~mask].eq(0).all())


def test_caption_loss_ignores_padding():
    """Mean cross-entropy over the non-pad targets, fp32 even for bf16 logits."""
    logits = torch.randn(2, 5, VOCAB)
    targets = torch.tensor(
        [[5, 6, 7, 8, EOS_INDEX], [9, EOS_INDEX, PAD_INDEX, PAD_INDEX, PAD_INDEX]]
    )
    log_probs = torch.log_softmax(logits, dim=-1)
    real = [(b, t) for b in range(2) for t in range(5) if targets[b, t] != PAD_INDEX]
    expected = -sum(log_probs[b, t, targets[b, t]] for b, t in real) / len(real)
    torch.testing.assert_close(caption_loss(logits, targets), expected)

    changed = logits.clone()
    changed[1, 2:] = 100 * torch.randn(3, VOCAB)  # logits at padded targets
    torch.testing.assert_close(caption_loss(changed, targets), expected)

    loss = caption_loss(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=0.05, rtol=0.02)


def sequence_score(decoder, audio, mask, ids, max_length, length_penalty):
    """Teacher-forced score of one hypothesis, with EOS when it ended before max_length."""
    targets = ids + [EOS_INDEX] if len(ids) < max_length else ids
    tokens_in = torch.tensor([[BOS_INDEX, *targets[:-1]]])
    with torch.no_grad():
        log_probs = torch.log_softmax(decoder(tokens_in, audio, mask).float(), dim=-1)
    total = log_probs[0, torch.arange(len(targets)), torch.tensor(targets)].sum()
    return float(total) / len(targets) ** length_penalty


@pytest.mark.parametrize("eos_bias", [0.0, 2.0])
def test_beam_one_equals_greedy_and_beam_scores_higher(eos_bias):
    """beam_size=1 equals SpeechBrain's greedy searcher; wider beams score at least as well.

    eos_bias=0 lets most captions run to max_length; eos_bias=2 ends many early.
    A hole in one clip's mask checks the greedy path's handling of any mask.
    """
    ended_by_eos = ended_by_limit = 0
    for seed in range(4):
        decoder = make_decoder(seed, eos_bias=eos_bias)
        audio, mask, _, _ = padded_audio()
        mask[0, 2] = False
        greedy = decoder.greedy_decode(audio, mask)
        assert decoder.beam_search(audio, mask, beam_size=1) == greedy
        for length_penalty in (0.0, 1.0):
            beam = decoder.beam_search(audio, mask, beam_size=4, length_penalty=length_penalty)
            assert beam == decoder.beam_search(audio, mask, 4, length_penalty=length_penalty)
            for b, (g, h) in enumerate(zip(greedy, beam, strict=True)):
                assert len(h) <= MAX_LENGTH
                assert EOS_INDEX not in h and all(0 <= i < VOCAB for i in h)
                args = (decoder, audio[b : b + 1], mask[b : b + 1])
                assert sequence_score(*args, h, MAX_LENGTH, length_penalty) >= (
                    sequence_score(*args, g, MAX_LENGTH, length_penalty) - 1e-4
                )
        ended_by_eos += sum(len(g) < MAX_LENGTH for g in greedy)
        ended_by_limit += sum(len(g) == MAX_LENGTH for g in greedy)
    # The case this parametrisation is for was exercised.
    assert (ended_by_eos if eos_bias else ended_by_limit) > 0


def test_decoding_is_deterministic_and_keeps_training_mode():
    """Decoding runs without dropout and restores the module's mode."""
    decoder = make_decoder(dropout=0.5, eos_bias=1.0)
    audio, mask, _, _ = padded_audio()
    reference = decoder.beam_search(audio, mask), decoder.greedy_decode(audio, mask)
    decoder.train()
    assert (decoder.beam_search(audio, mask), decoder.greedy_decode(audio, mask)) == reference
    assert decoder.training


def test_overfits_three_captions():
    """A tiny decoder learns 3 (audio, caption) pairs; greedy and beam decode reproduce them."""
    torch.manual_seed(0)
    decoder = CaptionDecoder(
        VOCAB,
        AUDIO_DIM,
        d_model=64,
        num_layers=2,
        num_heads=4,
        ffn_dim=128,
        max_length=MAX_LENGTH,
        dropout=0.0,
    )
    audio, mask, _, _ = padded_audio([6, 4, 9])
    captions = [[5, 9, 9, 12, 7], [20, 4], [8, 8, 15, 23, 6, 11, 4]]
    tokens_in = torch.full((3, 8), PAD_INDEX)
    tokens_out = torch.full((3, 8), PAD_INDEX)
    for b, caption in enumerate(captions):
        tokens_in[b, : len(caption) + 1] = torch.tensor([BOS_INDEX, *caption])
        tokens_out[b, : len(caption) + 1] = torch.tensor([*caption, EOS_INDEX])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    decoder.train()
    for _ in range(200):
        loss = caption_loss(decoder(tokens_in, audio, mask), tokens_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    assert decoder.greedy_decode(audio, mask) == captions
    assert decoder.beam_search(audio, mask, beam_size=3) == captions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoder.greedy_decode(audio, mask) == captions
        assert decoder.beam_search(audio, mask, beam_size=3) == captions


def test_autocast_bf16_matches_fp32():
    """Under bf16 autocast the logits stay close to fp32 and the loss is fp32."""
    decoder = make_decoder()
    audio, mask, packed, cu_seqlens = padded_audio()
    tokens = random_tokens(len(SEQLENS), 6)
    with torch.no_grad():
        reference = decoder(tokens, audio, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = decoder.forward_packed(tokens, packed, cu_seqlens)
            loss = caption_loss(logits, tokens)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    scale = reference.abs().max()
    assert (logits.float() - reference).abs().max() < 0.05 * scale


def test_rejects_bad_inputs():
    """Clips without audio, tokens past max_length and bad max_length fail early."""
    decoder = make_decoder()
    audio, mask, _, _ = padded_audio()
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="at least one valid audio token"):
        decoder(random_tokens(3, 4), audio, empty)
    with pytest.raises(ValueError, match="max_length"):
        decoder(random_tokens(3, MAX_LENGTH + 1), audio, mask)
    with pytest.raises(ValueError, match="max_length"):
        decoder.greedy_decode(audio, mask, max_length=MAX_LENGTH + 1)
    with pytest.raises(ValueError, match="bool"):
        decoder(random_tokens(3, 4), audio, mask.float())


def write_captions(path):
    """A CSV of 53 template captions, some with commas (CSV quoting)."""
    subjects = ["a dog", "a small cat", "the engine", "people", "a bird", "water", "a woman"]
    actions = ["barks loudly", "is running", "starts, then stops", "talks quietly", "splashes"]
    places = ["outside", "in a big room", "near the busy road"]
    captions = [f"{s} {a} {p}" for s, a, p in itertools.product(subjects, actions, places)][::2]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "caption"])
        writer.writerows(enumerate(captions))
    return captions


def test_tokenizer_special_ids_and_round_trip(tmp_path):
    """SentencePiece (SpeechBrain wrapper) with pad/bos/eos/unk = 0/1/2/3, lossless round trip."""
    captions = write_captions(tmp_path / "train.csv")
    assert len(captions) >= 50
    tokenizer = train_caption_tokenizer(tmp_path / "train.csv", tmp_path / "tok", vocab_size=40)
    sp = tokenizer.sp
    assert sp.vocab_size() == 40
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    decoder = CaptionDecoder(sp.vocab_size(), AUDIO_DIM, d_model=32, num_layers=1, num_heads=4)
    assert (decoder.pad_index, decoder.bos_index, decoder.eos_index) == (
        sp.pad_id(),
        sp.bos_id(),
        sp.eos_id(),
    )
    assert (PAD_INDEX, BOS_INDEX, EOS_INDEX, UNK_INDEX) == (0, 1, 2, 3)

    with_comma = next(caption for caption in captions if "," in caption)
    batch = [with_comma, captions[0], "a dog"]
    tokens_in, tokens_out = encode_captions(sp, batch, max_length=64)
    for b, caption in enumerate(batch):
        ids = sp.encode_as_ids(caption)
        n = len(ids)
        assert tokens_in[b, : n + 1].tolist() == [BOS_INDEX, *ids]
        assert tokens_out[b, : n + 1].tolist() == [*ids, EOS_INDEX]
        assert bool(tokens_in[b, n + 1 :].eq(PAD_INDEX).all())
        assert bool(tokens_out[b, n + 1 :].eq(PAD_INDEX).all())
        assert decode_ids(sp, tokens_out[b].tolist()) == caption
        assert decode_ids(sp, ids) == caption

    # Truncation keeps BOS and EOS within max_length.
    tokens_in, tokens_out = encode_captions(sp, [with_comma], max_length=4)
    assert tokens_in.shape == (1, 4) and tokens_out[0, -1] == EOS_INDEX


def test_tokenizer_with_other_ids_is_rejected(tmp_path):
    """A model left in the folder with SentencePiece's own default ids fails early."""
    write_captions(tmp_path / "train.csv")
    SentencePiece(str(tmp_path / "tok"), 50, str(tmp_path / "train.csv"), "caption", "char")
    with pytest.raises(ValueError, match="pad/bos/eos/unk"):
        train_caption_tokenizer(tmp_path / "train.csv", tmp_path / "tok", 50, model_type="char")


def time_steps(mask):
    """``(B, L)`` time step of each row: 0, 1, 2, ... within each clip (padding too)."""
    return torch.arange(mask.shape[1]).expand(mask.shape[0], -1).float()


def test_time_embedding_values():
    """Sines then cosines of t / base ** (2i / dim), against the formula written out."""
    t = torch.tensor([0.0, 1.0, 7.5])
    emb = time_embedding(t, 6, base=100.0)
    frequencies = [1.0, 100.0 ** (-2 / 6), 100.0 ** (-4 / 6)]
    expected = [
        [*(math.sin(x * f) for f in frequencies), *(math.cos(x * f) for f in frequencies)]
        for x in t.tolist()
    ]
    torch.testing.assert_close(emb, torch.tensor(expected), atol=1e-6, rtol=1e-6)
    assert time_embedding(torch.zeros(2, 3), 4).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="even dim"):
        time_embedding(t, 5)


@torch.no_grad()
def test_without_time_positions_the_memory_is_a_set():
    """Without positions, reordering a clip's tokens changes nothing (so order cannot be
    read); with them, tokens keep their time steps and only swapping the steps matters."""
    audio, mask, _, _ = padded_audio(seqlens=[6])
    tokens = random_tokens(1, 6)
    order = torch.tensor([[3, 1, 5, 0, 2, 4]])
    shuffled = audio.gather(1, order[..., None].expand_as(audio))
    steps = time_steps(mask)

    plain = make_decoder()
    torch.testing.assert_close(plain(tokens, shuffled, mask), plain(tokens, audio, mask))
    torch.testing.assert_close(  # time_index is ignored without positions
        plain(tokens, audio, mask, time_index=steps + 5.0), plain(tokens, audio, mask)
    )

    timed = make_decoder(positions=True)
    logits = timed(tokens, audio, mask, time_index=steps)
    torch.testing.assert_close(
        timed(tokens, shuffled, mask, time_index=steps.gather(1, order)), logits
    )
    moved = timed(tokens, shuffled, mask, time_index=steps)  # same steps, other tokens
    assert (moved - logits).abs().max() > 1e-3
    # The memory is the projection plus the embedding of each row's step.
    memory = timed.project_audio(audio, mask, steps)
    torch.testing.assert_close(memory, timed.audio_proj(audio) + time_embedding(steps, 32))


@torch.no_grad()
def test_time_positions_packed_padded_and_decoding_agree():
    """forward_packed with per-token steps equals forward padded; beam 1 equals greedy."""
    decoder = make_decoder(positions=True, eos_bias=1.0)
    audio, mask, packed, cu_seqlens = padded_audio(garbage=10.0)
    steps = 2.0 * time_steps(mask) + 1.0
    tokens = random_tokens(len(SEQLENS), 6)
    torch.testing.assert_close(
        decoder(tokens, packed, cu_seqlens=cu_seqlens, time_index=steps[mask]),
        decoder(tokens, audio, mask, time_index=steps),
        atol=1e-5,
        rtol=1e-5,
    )
    greedy = decoder.greedy_decode(audio, mask, time_index=steps)
    assert decoder.beam_search(audio, mask, beam_size=1, time_index=steps) == greedy
    assert greedy != decoder.greedy_decode(audio, mask, time_index=steps + 40.0)


@torch.no_grad()
@pytest.mark.parametrize("positions", [False, True])
def test_several_captions_per_clip_equal_each_caption_alone(positions):
    """captions_per_clip=K: row k of clip b is the logits of that caption on clip b alone."""
    decoder = make_decoder(positions=positions)
    audio, mask, packed, cu_seqlens = padded_audio(garbage=10.0)
    steps = 2.0 * time_steps(mask) + 1.0
    per_clip = 3
    tokens = random_tokens(len(SEQLENS) * per_clip, 6)
    logits = decoder(
        tokens, packed, cu_seqlens=cu_seqlens, time_index=steps[mask], captions_per_clip=per_clip
    )
    assert logits.shape == (len(SEQLENS) * per_clip, 6, VOCAB)
    for clip, length in enumerate(SEQLENS):
        rows = tokens[clip * per_clip : (clip + 1) * per_clip]
        alone = decoder(
            rows,
            audio[clip : clip + 1, :length].expand(per_clip, -1, -1),
            torch.ones(per_clip, length, dtype=torch.bool),
            time_index=steps[clip : clip + 1, :length].expand(per_clip, -1),
        )
        torch.testing.assert_close(
            logits[clip * per_clip : (clip + 1) * per_clip], alone, atol=1e-5, rtol=1e-5
        )
    with pytest.raises(ValueError, match="captions_per_clip=2 needs 2 caption rows per clip"):
        decoder(tokens, audio, mask, time_index=steps, captions_per_clip=2)
    with pytest.raises(ValueError, match="decoder_captions must be an int >= 1"):
        check_decoder_captions(0)
    with pytest.raises(ValueError, match="decoder_captions must be an int >= 1"):
        check_decoder_captions("4")


def test_time_positions_need_time_index():
    decoder = make_decoder(positions=True)
    audio, mask, _, _ = padded_audio()
    tokens = random_tokens(len(SEQLENS), 4)
    with pytest.raises(ValueError, match="pass time_index of shape"):
        decoder(tokens, audio, mask)
    with pytest.raises(ValueError, match="pass time_index of shape"):
        decoder(tokens, audio, mask, time_index=time_steps(mask)[:, :2])
    with pytest.raises(ValueError, match="even d_model"):
        CaptionDecoder(VOCAB, AUDIO_DIM, d_model=31, num_heads=1, memory_time_positions=True)


@torch.no_grad()
@pytest.mark.parametrize("positions", [False, True])
def test_prefix_log_likelihoods_equal_teacher_forcing(positions):
    """Each clip x prefix score is the sum of the teacher-forced log-probabilities of the
    prefix's ids (one clip and one prefix at a time), padding ids not counted."""
    decoder = make_decoder(positions=positions).train()
    audio, mask, _, _ = padded_audio(garbage=10.0)
    steps = time_steps(mask)
    prefixes = torch.tensor([[5, 6, 7, 8], [9, 10, PAD_INDEX, PAD_INDEX], [11, PAD_INDEX, 0, 0]])
    scores = decoder.prefix_log_likelihoods(audio, mask, prefixes, steps)
    assert decoder.training and scores.shape == (len(SEQLENS), 3)
    decoder.eval()
    for b, n in enumerate(SEQLENS):
        for k, prefix in enumerate(prefixes.tolist()):
            ids = [i for i in prefix if i != PAD_INDEX]
            tokens_in = torch.tensor([[BOS_INDEX, *ids[:-1]]])
            logits = decoder(
                tokens_in,
                audio[b : b + 1, :n],
                mask[b : b + 1, :n],
                time_index=steps[b : b + 1, :n],
            )
            expected = logits.log_softmax(-1)[0, torch.arange(len(ids)), ids].sum()
            assert scores[b, k].item() == pytest.approx(expected.item(), abs=1e-4)
    with pytest.raises(ValueError, match="starting with a non-pad id"):
        decoder.prefix_log_likelihoods(audio, mask, torch.tensor([[PAD_INDEX, 5]]), steps)


def test_caption_prompt_ids_are_prefixes(tmp_path):
    """Prompts lose their closing full stop, gain no BOS/EOS, and are right-padded."""
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text("id,caption\n0,The sound of a dog barking\n1,a bell rings twice\n")
    sp = train_caption_tokenizer(csv_file, tmp_path / "tok", model_type="char").sp
    ids = caption_prompt_ids(sp, ["The sound of a dog barking.", "a bell "])
    assert decode_ids(sp, ids[0].tolist()) == "The sound of a dog barking"
    assert ids[1].tolist() == sp.encode_as_ids("a bell") + [sp.pad_id()] * (
        ids.shape[1] - len(sp.encode_as_ids("a bell"))
    )
    assert BOS_INDEX not in ids.tolist()[0] and EOS_INDEX not in ids.tolist()[0]
    with pytest.raises(ValueError, match="non-empty prompts"):
        caption_prompt_ids(sp, ["."])
