"""Tests for lobes/onset.py: each clip's onset step and onset window, against a reference."""

import numpy as np
import pytest
import torch

from speechbrain_slap.lobes.onset import check_onset_settings, onset_steps, onset_windows
from speechbrain_slap.lobes.packing import patchify
from speechbrain_slap.lobes.pooling import MAPooling

DIM = 8
FRAMES = [160, 48, 96]  # 10, 3 and 6 time steps of 4 bands each


def packed_clips(frames=FRAMES):
    """A packed batch of ``len(frames)`` clips and random tokens for it."""
    feats = torch.zeros(len(frames), max(frames), 64)
    packed = patchify(feats, torch.tensor(frames))
    torch.manual_seed(0)
    return packed, torch.randn(int(packed.cu_seqlens[-1]), DIM)


def reference_onsets(tokens, packed, threshold):
    """The onset of each clip, step by step in numpy (lower median, as torch takes it)."""
    onsets = []
    bounds = packed.cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        clip = tokens[start:end].double().numpy()
        steps = packed.pos_t[start:end].numpy()
        bands = packed.pos_f[start:end].numpy()
        order = sorted(set(steps.tolist()))
        background = {}
        for band in set(bands.tolist()):
            rows = np.sort(clip[bands == band], axis=0)
            background[band] = rows[(len(rows) - 1) // 2]
        far = [
            max(np.linalg.norm(clip[i] - background[bands[i]]) for i in np.flatnonzero(steps == s))
            for s in order
        ]
        low, high = min(far), max(far)
        onsets.append(
            next(
                (s for s, d in zip(order, far, strict=True) if d > low + threshold * (high - low)),
                0,
            )
        )
    return onsets


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.25, 0.6])
def test_onset_steps_equal_a_step_by_step_reference(threshold):
    packed, tokens = packed_clips()
    expected = reference_onsets(tokens, packed, threshold)
    assert onset_steps(tokens, packed, threshold).tolist() == expected


def test_the_onset_is_the_first_step_that_stands_out_of_the_background():
    """Quiet background, an event in one band of step 6 (clip 0) and of step 1 (clip 1); a
    faint earlier event (step 2 of clip 0, 10% of the event) passes a low threshold only."""
    packed, noise = packed_clips(FRAMES[:2])
    tokens = 0.01 * noise + torch.linspace(-1, 1, DIM)  # the same background everywhere
    clip0 = packed.clip_id == 0
    tokens[clip0 & (packed.pos_t == 6) & (packed.pos_f == 2), 0] += 5.0
    tokens[clip0 & (packed.pos_t == 2) & (packed.pos_f == 0), 1] += 0.5
    tokens[(packed.clip_id == 1) & (packed.pos_t == 1) & (packed.pos_f == 3), 3] -= 4.0
    assert onset_steps(tokens, packed, threshold=0.25).tolist() == [6, 1]
    assert onset_steps(tokens, packed, threshold=0.05).tolist() == [2, 1]
    # A strong steady background in one band does not hide a weak event in another.
    tokens = 0.01 * noise
    tokens[packed.pos_f == 2, 0] += 10.0
    tokens[clip0 & (packed.pos_t == 4) & (packed.pos_f == 0), 1] += 1.0
    assert onset_steps(tokens, packed, threshold=0.25).tolist()[0] == 4
    # Steps that are all alike: step 0.
    flat = torch.ones_like(tokens)
    assert onset_steps(flat, packed, threshold=0.25).tolist() == [0, 0]


@pytest.mark.parametrize("window_steps", [1, 3, 5])
def test_onset_windows_hold_the_tokens_of_the_steps_from_the_onset(window_steps):
    packed, tokens = packed_clips()
    onsets = onset_steps(tokens, packed, 0.25).tolist()
    window, cu_seqlens = onset_windows(tokens, packed, 0.25, window_steps)
    bounds = packed.cu_seqlens.tolist()
    expected = []
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        steps = packed.pos_t[start:end]
        keep = (steps >= onsets[b]) & (steps < onsets[b] + window_steps)  # cut at the clip's end
        expected.append(tokens[start:end][keep])
        assert len(expected[-1]) == 4 * min(window_steps, int(steps.max()) + 1 - onsets[b])
    torch.testing.assert_close(window, torch.cat(expected))
    assert cu_seqlens.tolist() == np.cumsum([0] + [len(e) for e in expected]).tolist()
    assert cu_seqlens.dtype == packed.cu_seqlens.dtype


def test_map_over_the_windows_equals_each_window_pooled_alone():
    packed, tokens = packed_clips()
    pool = MAPooling(input_size=DIM, num_heads=2).eval()
    window, cu_seqlens = onset_windows(tokens, packed, 0.25, 3)
    with torch.no_grad():
        together = pool(window, cu_seqlens=cu_seqlens)
        for b in range(packed.batch_size):
            alone = window[cu_seqlens[b] : cu_seqlens[b + 1]]
            torch.testing.assert_close(
                together[b], pool(alone, cu_seqlens=torch.tensor([0, len(alone)]))[0]
            )


@pytest.mark.parametrize(
    "threshold, window_steps, field",
    [
        (1.0, 3, "onset_threshold"),
        (-0.1, 3, "onset_threshold"),
        ("0.25", 3, "onset_threshold"),
        (0.25, 0, "onset_window_steps"),
        (0.25, 2.5, "onset_window_steps"),
        (0.25, True, "onset_window_steps"),
    ],
)
def test_bad_onset_settings_name_the_setting(threshold, window_steps, field):
    with pytest.raises(ValueError, match=field):
        check_onset_settings(threshold, window_steps)
    packed, tokens = packed_clips()
    with pytest.raises(ValueError, match=field):
        onset_windows(tokens, packed, threshold, window_steps)
