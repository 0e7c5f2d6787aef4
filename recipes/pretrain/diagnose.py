#!/usr/bin/env python3
"""What limits SLAP pretraining on the embedded corpus: measurements, no training changes.

Three reports (``recipes/pretrain/README.md`` has their results):

``time``: where a training step's wall time goes. Builds the recipe's
``SLAPBrain`` from a yaml exactly as ``train.py`` does, runs ``--steps``
training steps and times every module's forward (features, SpecAugment, the
student encoder over both views, the EMA teacher, the text encoder, the
caption decoder, the SSL heads), the losses, the EMA update, and the rest of
the step (backward and optimizer); data loading is timed on its own by
drawing the same number of batches from the train loader::

    python recipes/pretrain/diagnose.py time recipes/pretrain/hparams/pretrain_tiny_synth.yaml

``attributes``: for a trained recipe output, which attribute a text-to-audio
top-1 retrieval gets right on the valid (or test) split: the pair of sound
types, their order, and each group's pitch, loudness and count::

    python recipes/pretrain/diagnose.py attributes results/pretrain_tiny_synth/1234 --split valid

``oracle``: what a perfect reader of the captions could reach: how many clips
of a split share an identical description (same scene, so the same captions),
and the R@1 a retrieval that ranks those ties at random would score::

    python recipes/pretrain/diagnose.py oracle data/slap_synth --split test

``zeroshot``: the recipe's zero-shot score (the first sound's type, one
prompt per type) beside how often the predicted type is one of the clip's two
types at all, for a trained recipe output: a model that finds the sounds but
not which came first scores about half of the second. Two order-aware prompt
sets are scored on the same clips: one prompt per type that says it comes
first ("First the sound of a dog barking, then another sound."), and each
type's prompt with every other type after it ("The sound of a dog barking,
then the sound of a bell ringing.", the type's score the mean or the maximum
of its prompts' similarities); two stages (the two best one-sound prompts'
types, then the better of their two ordered pair prompts); and prompt
ensembles from the corpus's caption generator (``caption_ensemble``: a type
is the mean embedding of every caption whose first sound it is;
``one_sound_caption_ensemble``: of the one-sound ones); and the caption
decoder's reading (``decoder_prompts``: the prompt, without its full stop,
that the decoder finds likeliest to open the clip's caption, the recipe's
``zeroshot_caption_accuracy``). ``caption_text``
scores the clips' own caption embeddings (each phrasing, text tower only)
against the one-sound prompts: what an audio encoder whose embeddings equalled
its captions' would score, the ceiling that training the audio side alone can
reach under these prompts; and ``one_sound_clips`` the recipe's score on the
clips that hold one sound::

    python recipes/pretrain/diagnose.py zeroshot results/pretrain_tiny_synth/1234 --split valid

``onset``: how the recipe's ``zeroshot_onset_accuracy`` comes about, for a
trained recipe output (``lobes/onset.py``): how often the detected onset step
falls in the clip's first event (the manifest's ``events``, one step of
slack either side), the first-sound accuracy of the onset windows, and of a
window of the same length placed at the true first onset (what a perfect
detector would give), beside the clip embedding's; ``--thresholds`` and
``--windows`` score other settings of the detector on the same tokens::

    python recipes/pretrain/diagnose.py onset results/pretrain_tiny_synth/1234 --split valid

``pooling``: how fast the tiny encoder learns which sound types a clip holds
under each pooling, supervised (no text, no SSL): a linear head on the pooled
tokens is trained with a multi-label loss on the training clips, and the
valid clips whose two highest scores are exactly their types are counted.
``--pool map`` is SLAP's MAP head as the package initialises it;
``--map_init small`` draws its probe and projections at std 0.02 (the
initialisation of earlier revisions); ``mean`` and ``max`` pool the tokens
directly::

    python recipes/pretrain/diagnose.py pooling data/slap_synth --pool map --steps 200

``decoder_order``: whether the caption decoder can tell which sound came
first. The audio encoder of a trained recipe output is frozen; its test,
valid and training tokens are computed once, and a fresh caption decoder (the
recipe's size) is trained on the training clips' captions for ``--epochs``
epochs, once reading its memory as a set and once with each token's time step
added (``CaptionDecoder(memory_time_positions=True)``). After each epoch the
decoder's zero-shot reading (``prefix_log_likelihoods`` of the recipe's
prompts) is scored on the test and valid clips: the first sound's type, and
how often the prediction is one of the clip's types::

    python recipes/pretrain/diagnose.py decoder_order results/pretrain_tiny_synth/1234 --epochs 14

Authors
 * speechbrain-slap contributors 2026
"""

import argparse
import collections
import csv
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as recipe  # noqa: E402  (the recipe beside this file)

# Modules timed in "time", in the order of a step.
TIMED = (
    "compute_features",
    "spec_augment",
    "audio_encoder",
    "teacher_encoder",
    "audio_pooling",
    "text_encoder",
    "caption_decoder",
    "ssl_head",
    "teacher_ssl_head",
)


class Timer:
    """Sums the wall time of a module's forward calls (pre/post hooks)."""

    def __init__(self):
        self.total = collections.defaultdict(float)
        self._start = {}

    def attach(self, name: str, module: torch.nn.Module):
        module.register_forward_pre_hook(
            lambda m, args: self._start.__setitem__(name, time.perf_counter())
        )
        module.register_forward_hook(
            lambda m, args, out: self.total.__setitem__(
                name, self.total[name] + time.perf_counter() - self._start[name]
            )
        )


def build(yaml_file: str, overrides: str):
    """The recipe's hparams, datasets and ``SLAPBrain``, built as ``train.py`` builds them."""
    with open(yaml_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(hparams["output_folder"])
    recipe.prepare_corpus(hparams)
    tokenizer = recipe.prepare_tokenizer(hparams)
    datasets = recipe.dataio_prepare(hparams, tokenizer)
    hparams["zeroshot_prompt_ids"] = recipe.zeroshot_prompt_ids(hparams, tokenizer)
    train_kwargs = recipe.loader_kwargs(datasets["train"], hparams, train=True)
    steps = len(train_kwargs["batch_sampler"]) * hparams["number_of_epochs"]
    hparams["lr_schedule"].total_steps = hparams["teacher"].total_steps = steps
    brain = recipe.SLAPBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    return hparams, datasets, brain, train_kwargs


def time_split(args) -> None:
    """Prints the per-step time of each part of a training step."""
    hparams, datasets, brain, train_kwargs = build(args.hparams, args.overrides)
    loader = brain.make_dataloader(datasets["train"], sb.Stage.TRAIN, **train_kwargs)
    start = time.perf_counter()
    batches = [batch for _, batch in zip(range(args.steps + args.warmup), loader, strict=False)]
    loading = (time.perf_counter() - start) / len(batches)

    timer = Timer()
    for name in ("compute_features", "audio_encoder", "audio_pooling", "text_encoder"):
        timer.attach(name, brain.modules[name])
    timer.attach("caption_decoder", brain.modules["caption_decoder"])
    timer.attach("ssl_head", brain.modules["ssl_head"])
    timer.attach("teacher_encoder", brain.modules["teacher"]["audio_encoder"])
    timer.attach("teacher_ssl_head", brain.modules["teacher"]["ssl_head"])
    for augment in hparams["spec_augment"] or []:
        timer.attach("spec_augment", augment)
    objectives, ema = [0.0], [0.0]

    def timed(function, store):
        def wrapper(*a, **k):
            begin = time.perf_counter()
            result = function(*a, **k)
            store[0] += time.perf_counter() - begin
            return result

        return wrapper

    brain.compute_objectives = timed(brain.compute_objectives, objectives)
    teacher = brain.modules["teacher"]
    teacher.update = timed(teacher.update, ema)

    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    audio_seconds, clips, step_times = [], [], []
    for index, batch in enumerate(batches):
        if index == args.warmup:  # the first steps allocate and warm caches
            timer.total.clear()
            objectives[0] = ema[0] = 0.0
        begin = time.perf_counter()
        brain.step += 1
        batch_ = brain.fit_batch(batch)
        brain.on_fit_batch_end(batch, None, batch_, True)
        if index >= args.warmup:
            step_times.append(time.perf_counter() - begin)
            lengths = batch.sig[1] * batch.sig[0].shape[1] / hparams["sample_rate"]
            audio_seconds.append(float(lengths.sum()))
            clips.append(len(batch))
    n = len(step_times)
    step = sum(step_times) / n
    # The objectives call includes the losses only; the caption and SSL heads run in forward.
    rows = [(name, timer.total[name] / n) for name in TIMED if name in timer.total]
    rows += [("losses (CLAP, SSL, captioning)", objectives[0] / n), ("EMA update", ema[0] / n)]
    rows.append(("backward + optimizer (the rest)", step - sum(t for _, t in rows)))
    print(
        f"\n{n} training steps after {args.warmup} warm-up steps, torch threads "
        f"{torch.get_num_threads()}: {statistics.mean(clips):.1f} clips and "
        f"{statistics.mean(audio_seconds):.1f} s of audio per step, step {1000 * step:.0f} ms "
        f"({statistics.mean(audio_seconds) / step:.0f} audio-s/s); data loading "
        f"{1000 * loading:.0f} ms per batch (num_workers {hparams['num_workers']})\n"
    )
    print("| part | ms / step | share of the step |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / step:.1f}% |")
    print(f"| data loading (separate) | {1000 * loading:.1f} | {100 * loading / step:.1f}% |")
    if args.json:
        record = {
            "step_ms": 1000 * step,
            "batches_per_epoch": len(train_kwargs["batch_sampler"]),
            "audio_seconds_per_step": statistics.mean(audio_seconds),
            "threads": torch.get_num_threads(),
            "parts_ms": {name: 1000 * seconds for name, seconds in rows},
            "data_loading_ms": 1000 * loading,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _scenes(csv_file: Path) -> dict[str, dict]:
    with open(csv_file, newline="", encoding="utf-8") as fin:
        return {row["ID"]: json.loads(row["scene"]) for row in csv.DictReader(fin)}


def attribute_matches(similarity: torch.Tensor, text_to_audio, scenes: list[dict]) -> dict:
    """Share of text queries whose top-1 audio agrees with the query's clip on each attribute.

    ``pair``: the same set of sound types; ``order``: the same ordered types,
    among queries whose pair is right; ``pitch``/``loudness``/``count``: every
    group agrees, among queries whose ordered types are right; ``exact``: the
    same clip (t2a R@1).
    """
    top = similarity.argmax(dim=1).tolist()
    counts = collections.Counter()
    for query, retrieved in enumerate(top):
        want, got = scenes[text_to_audio[query]], scenes[retrieved]
        types = [g[0] for g in want["groups"]], [g[0] for g in got["groups"]]
        counts["queries"] += 1
        counts["exact"] += retrieved == text_to_audio[query]
        if sorted(types[0]) != sorted(types[1]):
            continue
        counts["pair"] += 1
        if types[0] != types[1]:
            continue
        counts["order"] += 1
        for index, name in ((1, "pitch"), (2, "loudness"), (3, "count")):
            pairs = zip(want["groups"], got["groups"], strict=True)
            counts[name] += all(a[index] == b[index] for a, b in pairs)
    n = counts["queries"]
    return {
        "t2a_R@1": counts["exact"] / n,
        "pair": counts["pair"] / n,
        "order_given_pair": counts["order"] / max(counts["pair"], 1),
        **{
            f"{k}_given_order": counts[k] / max(counts["order"], 1)
            for k in ("pitch", "loudness", "count")
        },
    }


def embed_split(args):
    """The best checkpoint of ``args.output_folder``, its eval embeddings of ``args.split``.

    Returns the hparams, the ``SLAPBrain`` holding the split's audio and
    caption embeddings (as its valid stage collects them) and the clip ids in
    their order.
    """
    output = Path(args.output_folder)
    overrides = {"output_folder": str(output), **json.loads(args.overrides or "{}")}
    hparams, datasets, brain, _ = build(str(output / "hyperparams.yaml"), overrides)
    brain.checkpointer.recover_if_possible(max_key="mean_R@1")
    brain.on_stage_start(sb.Stage.TEST)
    brain.modules.eval()
    loader = brain.make_dataloader(
        datasets[args.split],
        sb.Stage.TEST,
        **recipe.loader_kwargs(datasets[args.split], hparams, train=False),
    )
    ids = []
    with torch.no_grad():
        for batch in loader:  # as the test stage: the captioner's prompt scores too
            brain._collect_eval(brain.compute_forward(batch, sb.Stage.TEST), batch)
            ids.extend(batch.id)
    return hparams, brain, ids


def attributes(args) -> None:
    """Loads the best checkpoint of a recipe output and prints the attribute matches."""
    hparams, brain, ids = embed_split(args)
    metrics, similarity, text_to_audio = brain.evaluate_retrieval()
    by_id = _scenes(Path(hparams[f"{args.split}_csv"]))
    result = attribute_matches(similarity, text_to_audio, [by_id[i] for i in ids])
    print(json.dumps({"split": args.split, **result}, indent=2))


def _first_sound_ensemble(embed, sound_type: str, followers: bool) -> torch.Tensor:
    """The normalised mean embedding of generated captions that start with ``sound_type``.

    Every pitch, loudness and count of the first sound; with ``followers``,
    also that sound followed by each other type (its attributes cycling).
    """
    from speechbrain_slap.data.synthetic import (
        COUNTS,
        LOUDNESSES,
        PITCHES,
        SOUND_TYPES,
        EventGroup,
        Scene,
        scene_captions,
    )

    attributes = list(itertools.product(PITCHES, LOUDNESSES, COUNTS))
    others = [t for t in SOUND_TYPES if t != sound_type]
    captions = []
    for i, (pitch, loudness, count) in enumerate(attributes):
        first = EventGroup(sound_type, pitch, loudness, count)
        scenes = [(first,)]
        if followers:
            scenes += [
                (first, EventGroup(other, *attributes[(i + j + 1) % len(attributes)]))
                for j, other in enumerate(others)
            ]
        for groups in scenes:
            captions += scene_captions(Scene(groups, duration=4.0, background=False))
    return torch.nn.functional.normalize(embed(captions).mean(0), dim=0)


def zeroshot(args) -> None:
    """Prints first-sound zero-shot accuracy and the share of predictions among the clip's types."""
    from speechbrain_slap.data.synthetic import SOUND_TYPES
    from speechbrain_slap.metrics import zero_shot_accuracy

    hparams, brain, ids = embed_split(args)

    def embed(texts):
        return torch.nn.functional.normalize(brain._embed_texts(texts), dim=-1)

    with torch.no_grad():
        audio = torch.nn.functional.normalize(torch.cat(brain.eval_audio), dim=-1)
        prompts = list(hparams["zeroshot_prompts"])
        one_sound = embed(prompts)
        scores = {"one_sound_prompts": audio @ one_sound.T}
        # "The sound of a dog barking." -> "First the sound of a dog barking, then another sound."
        first = [f"First {p[0].lower()}{p[1:-1]}, then another sound." for p in prompts]
        scores["first_then_prompts"] = audio @ embed(first).T
        # Each type followed by every other one; a type scores the mean or the max over them.
        n = len(prompts)
        pairs = [
            f"{prompts[a][:-1]}, then {prompts[b][0].lower()}{prompts[b][1:]}"
            for a in range(n)
            for b in range(n)
            if a != b
        ]
        similarity = (audio @ embed(pairs).T).view(len(audio), n, n - 1)
        scores["pair_prompts_mean"] = similarity.mean(dim=2)
        scores["pair_prompts_max"] = similarity.amax(dim=2)
        # Two stages: the two types of the best one-sound prompts, then the better of
        # their two ordered pair prompts names the first (a one-hot score).
        pair_index = {
            (a, b): a * (n - 1) + b - (b > a) for a in range(n) for b in range(n) if a != b
        }
        flat = similarity.flatten(1)
        top = scores["one_sound_prompts"].topk(2, dim=1).indices.tolist()
        chosen = [
            a if flat[i, pair_index[a, b]] >= flat[i, pair_index[b, a]] else b
            for i, (a, b) in enumerate(top)
        ]
        scores["two_stage_pair_prompts"] = torch.nn.functional.one_hot(torch.tensor(chosen), n)
        # Prompt ensembles from the corpus's own caption generator: a type's embedding is
        # the mean of every caption whose first sound is that type (one sound, or
        # followed by each other type), or of the one-sound captions only.
        for name, followers in (("caption_ensemble", True), ("one_sound_caption_ensemble", False)):
            scores[name] = (
                audio
                @ torch.stack([_first_sound_ensemble(embed, t, followers) for t in SOUND_TYPES]).T
            )
        # The caption decoder: the prompt likeliest to open the clip's caption.
        if brain.eval_caption_scores:
            scores["decoder_prompts"] = torch.cat(brain.eval_caption_scores)
        # The captions' own text embeddings in place of the audio, one phrasing at a time.
        for k in range(min(len(c) for c in brain.eval_captions)):
            captions = embed([c[k] for c in brain.eval_captions])
            scores[f"caption_text_{k}"] = captions @ one_sound.T
    by_id = _scenes(Path(hparams[f"{args.split}_csv"]))
    groups = [[SOUND_TYPES.index(g[0]) for g in by_id[i]["groups"]] for i in ids]
    first_types = [g[0] for g in groups]
    report = {"split": args.split}
    single = [len(set(g)) == 1 for g in groups]
    if any(single):
        score = scores["one_sound_prompts"][torch.tensor(single)]
        labels = [t for t, s in zip(first_types, single, strict=True) if s]
        report["one_sound_clips"] = sum(single)
        report["one_sound_clips_accuracy"] = zero_shot_accuracy(score, labels)
    for name, score in scores.items():
        # The recipe's own metric for the label (the first sound's type).
        report[f"{name}_first_sound_accuracy"] = zero_shot_accuracy(score, first_types)
        predicted = score.argmax(dim=1).tolist()
        report[f"{name}_among_clip_types"] = statistics.mean(
            int(p in g) for p, g in zip(predicted, groups, strict=True)
        )
    phrasings = [k for k in report if k.startswith("caption_text_") and "first_sound" in k]
    report["caption_text_first_sound_accuracy_mean"] = statistics.mean(report[k] for k in phrasings)
    print(json.dumps(report, indent=2))


def _clip_tokens(brain, datasets, hparams, split):
    """``(id, tokens, time steps, captions)`` of every clip of ``split``, encoder frozen."""
    from speechbrain_slap.data.manifest import split_captions

    loader = brain.make_dataloader(
        datasets[split], sb.Stage.TEST, **recipe.loader_kwargs(datasets[split], hparams, False)
    )
    clips = []
    with torch.no_grad():
        for batch in loader:
            packed = brain._packed_features(batch, sb.Stage.TEST)
            tokens = brain.modules.audio_encoder(packed)
            for b in range(packed.batch_size):
                start, end = packed.cu_seqlens[b], packed.cu_seqlens[b + 1]
                clips.append(
                    (
                        batch.id[b],
                        tokens[start:end],
                        packed.pos_t[start:end].float(),
                        split_captions(batch.captions[b]),
                    )
                )
    return clips


def _padded(clips):
    """Padded tokens, mask and time steps of a list of ``_clip_tokens`` entries."""
    from speechbrain_slap.lobes.packing import unpack_tokens, unpack_values

    cu_seqlens = torch.tensor([0] + [len(c[1]) for c in clips]).cumsum(0)
    tokens, mask = unpack_tokens(torch.cat([c[1] for c in clips]), cu_seqlens)
    steps = unpack_values(torch.cat([c[2] for c in clips]), cu_seqlens)
    return tokens, mask, steps


def decoder_order(args) -> None:
    """Prints, per epoch, the zero-shot reading of fresh decoders with and without time steps."""
    import random

    from speechbrain_slap.data.synthetic import SOUND_TYPES
    from speechbrain_slap.lobes.caption_decoder import (
        CaptionDecoder,
        caption_loss,
        encode_captions,
    )

    output = Path(args.output_folder)
    hparams, datasets, brain, _ = build(
        str(output / "hyperparams.yaml"), {"output_folder": str(output)}
    )
    brain.checkpointer.recover_if_possible(max_key="mean_R@1")
    brain.modules.eval()
    tokenizer = recipe.prepare_tokenizer(hparams).sp
    prompts = hparams["zeroshot_prompt_ids"]
    begin = time.perf_counter()
    clips = {
        split: _clip_tokens(brain, datasets, hparams, split) for split in ("train", "valid", "test")
    }
    print(f"frozen encoder tokens of {sum(map(len, clips.values()))} clips "
          f"({time.perf_counter() - begin:.0f} s)", flush=True)  # fmt: skip
    size = {  # the recipe's decoder (its yaml names the same values)
        "vocab_size": hparams["vocab_size"],
        "audio_dim": hparams["embed_dim"],
        "d_model": hparams["decoder_dim"],
        "num_layers": hparams["decoder_layers"],
        "num_heads": hparams["decoder_heads"],
        "ffn_dim": hparams["decoder_ffn"],
        "max_length": hparams["max_caption_tokens"],
    }

    def reading(decoder, split):
        scenes = _scenes(Path(hparams[f"{split}_csv"]))
        scores, groups = [], []
        for i in range(0, len(clips[split]), 25):
            chunk = clips[split][i : i + 25]
            tokens, mask, steps = _padded(chunk)
            scores.append(decoder.prefix_log_likelihoods(tokens, mask, prompts, steps))
            groups += [[SOUND_TYPES.index(g[0]) for g in scenes[c[0]]["groups"]] for c in chunk]
        predicted = torch.cat(scores).argmax(dim=1).tolist()
        return {
            "first_sound_accuracy": statistics.mean(
                int(p == g[0]) for p, g in zip(predicted, groups, strict=True)
            ),
            "among_clip_types": statistics.mean(
                int(p in g) for p, g in zip(predicted, groups, strict=True)
            ),
        }

    for positions in (False, True):
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        decoder = CaptionDecoder(**size, memory_time_positions=positions)
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr)
        begin = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            order = list(range(len(clips["train"])))
            rng.shuffle(order)
            decoder.train()
            for i in range(0, len(order), args.batch_size):
                chunk = [clips["train"][j] for j in order[i : i + args.batch_size]]
                tokens, mask, steps = _padded(chunk)
                captions = [rng.choice(c[3]) for c in chunk]
                tokens_in, tokens_out = encode_captions(tokenizer, captions, size["max_length"])
                logits = decoder(tokens_in, tokens, mask, time_index=steps)
                loss = caption_loss(logits, tokens_out, tokenizer.pad_id())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            row = {"time_positions": positions, "epoch": epoch, "last_loss": round(loss.item(), 3)}
            for split in ("test", "valid"):
                row[split] = {k: round(v, 3) for k, v in reading(decoder, split).items()}
            row["seconds"] = round(time.perf_counter() - begin)
            print(json.dumps(row), flush=True)


def onset(args) -> None:
    """Prints onset detection and first-sound accuracy of onset windows under each setting."""
    from speechbrain_slap.data.synthetic import SOUND_TYPES, parse_events
    from speechbrain_slap.lobes.onset import onset_steps, onset_windows

    output = Path(args.output_folder)
    overrides = {"output_folder": str(output), **json.loads(args.overrides or "{}")}
    hparams, datasets, brain, _ = build(str(output / "hyperparams.yaml"), overrides)
    brain.checkpointer.recover_if_possible(max_key="mean_R@1")
    brain.modules.eval()
    pool = brain.modules.audio_pooling
    with open(hparams[f"{args.split}_csv"], newline="", encoding="utf-8") as fin:
        events = {row["ID"]: parse_events(row["events"]) for row in csv.DictReader(fin)}
    prompts = torch.nn.functional.normalize(
        brain._embed_texts(list(hparams["zeroshot_prompts"])), dim=-1
    )
    step_seconds = 0.16  # 16 frames of 10 ms per time step

    def first_sound(embeddings):
        return (torch.nn.functional.normalize(embeddings, dim=-1) @ prompts.T).argmax(1)

    counts, n = collections.Counter(), 0
    loader = brain.make_dataloader(
        datasets[args.split],
        sb.Stage.TEST,
        **recipe.loader_kwargs(datasets[args.split], hparams, train=False),
    )
    for batch in loader:
        with torch.no_grad():
            packed = brain._packed_features(batch, sb.Stage.TEST)
            tokens = brain.modules.audio_encoder(packed)
            labels = torch.tensor([SOUND_TYPES.index(events[i][0].sound_type) for i in batch.id])
            # The first event's steps, one step of slack either side.
            spans = torch.tensor(
                [
                    (
                        int(events[i][0].onset / step_seconds),
                        int(events[i][0].offset / step_seconds),
                    )
                    for i in batch.id
                ]
            )
            clip_id = packed.clip_id.long()
            last = torch.zeros(packed.batch_size, dtype=torch.long).scatter_reduce(
                0, clip_id, packed.pos_t.long(), reduce="amax"
            )
            spans[:, 0] = torch.minimum(spans[:, 0], last)
            whole = pool(tokens, cu_seqlens=packed.cu_seqlens)
            counts["clip"] += int((first_sound(whole) == labels).sum())
            for threshold in args.thresholds:
                step = onset_steps(tokens, packed, threshold)
                inside = (step >= spans[:, 0] - 1) & (step <= spans[:, 1] + 1)
                counts[f"detected: threshold {threshold}"] += int(inside.sum())
                for window_steps in args.windows:
                    window, cu = onset_windows(tokens, packed, threshold, window_steps, step)
                    right = first_sound(pool(window, cu_seqlens=cu)) == labels
                    counts[f"onset window: threshold {threshold}, {window_steps} steps"] += int(
                        right.sum()
                    )
            for window_steps in args.windows:
                offset = packed.pos_t.long() - spans[clip_id, 0]
                keep = (offset >= 0) & (offset < window_steps)
                cu = torch.zeros(packed.batch_size + 1, dtype=torch.long)
                cu[1:] = torch.bincount(clip_id[keep], minlength=packed.batch_size).cumsum(0)
                right = first_sound(pool(tokens[keep], cu_seqlens=cu)) == labels
                counts[f"window at the true onset: {window_steps} steps"] += int(right.sum())
        n += len(batch.id)
    report = {"split": args.split, "clips": n, **{k: v / n for k, v in counts.items()}}
    print(json.dumps(report, indent=2))


def oracle(args) -> None:
    """Prints how many clips share a description, and the oracle's expected R@1."""
    scenes = _scenes(Path(args.data_folder) / f"{args.split}.csv")
    groups = collections.Counter(json.dumps(scene, sort_keys=True) for scene in scenes.values())
    n = len(scenes)
    expected = sum(size * (1 / size) for size in groups.values()) / n  # = distinct / n
    shared = sum(size for size in groups.values() if size > 1)
    print(
        json.dumps(
            {
                "split": args.split,
                "clips": n,
                "distinct_descriptions": len(groups),
                "clips_sharing_a_description": shared,
                "largest_group": max(groups.values()),
                "oracle_t2a_R@1": expected,
                "chance_R@1": 1 / n,
            },
            indent=2,
        )
    )


def pooling(args) -> None:
    """Prints the valid type-set accuracy of a supervised type probe every ``--every`` steps."""
    import random

    from speechbrain_slap.data.audio import load_audio
    from speechbrain_slap.data.batching import pack_by_duration
    from speechbrain_slap.data.synthetic import SOUND_TYPES
    from speechbrain_slap.hparams import architecture_file
    from speechbrain_slap.lobes.features import pad_waveforms

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data = Path(args.data_folder)

    def clips(split, limit):
        with open(data / f"{split}.csv", newline="", encoding="utf-8") as fin:
            rows = list(csv.DictReader(fin))[:limit]
        target = torch.zeros(len(rows), len(SOUND_TYPES))
        for i, row in enumerate(rows):
            for group in json.loads(row["scene"])["groups"]:
                target[i, SOUND_TYPES.index(group[0])] = 1
        wavs = [load_audio(row["wav"].replace("$data_root", str(data))) for row in rows]
        return wavs, target

    train, valid = clips("train", args.n_train), clips("valid", 200)
    with open(architecture_file("slap_tiny"), encoding="utf-8") as fin:
        model = load_hyperpyyaml(fin)
    features, encoder, pool = (
        model["compute_features"],
        model["audio_encoder"],
        model["audio_pooling"],
    )
    if args.map_init == "small":
        torch.nn.init.trunc_normal_(pool.probe, std=0.02)
        for module in pool.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.trunc_normal_(module.weight, std=0.02)
    head = torch.nn.Linear(encoder.embed_dim, len(SOUND_TYPES))
    trained = [*encoder.parameters(), *head.parameters()]
    trained += list(pool.parameters()) if args.pool == "map" else []
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.05)

    def scores(wavs):
        padded, lengths = pad_waveforms(wavs)
        tokens = encoder(features(padded), lengths)
        real = tokens.ne(0).any(-1, keepdim=True)  # padding rows are exactly zero
        if args.pool == "max":
            pooled = tokens.masked_fill(~real, float("-inf")).amax(1)
        elif args.pool == "mean":
            pooled = (tokens * real).sum(1) / real.sum(1)
        else:
            pooled = pool(tokens, lengths)
        return head(pooled)

    def type_set_accuracy():
        encoder.eval()
        pool.eval()
        hits = 0
        with torch.no_grad():
            for start in range(0, 200, 20):
                wavs, target = valid[0][start : start + 20], valid[1][start : start + 20]
                top = scores(wavs).topk(2).indices
                hits += int(target.gather(1, top).sum(1).eq(2).sum())
        encoder.train()
        pool.train()
        return hits / len(valid[0])

    step, begin = 0, time.perf_counter()
    duration = [min(w.numel() / 16000, 30.0) for w in train[0]]
    print(f"pooling {args.pool}, MAP init {args.map_init}, {len(duration)} training clips")
    while step < args.steps:
        order = list(range(len(duration)))
        rng.shuffle(order)
        for batch in pack_by_duration(order, duration.__getitem__, args.batch_seconds, 48):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                scores([train[0][i] for i in batch]), train[1][batch]
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 5.0)
            optimizer.step()
            step += 1
            if step % args.every == 0:
                print(
                    f"step {step}: loss {loss.item():.3f}, valid type-set accuracy "
                    f"{type_set_accuracy():.3f} ({time.perf_counter() - begin:.0f} s)",
                    flush=True,
                )
            if step >= args.steps:
                break


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="report", required=True)
    p = sub.add_parser("time", help="time split of a training step")
    p.add_argument("hparams")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--overrides", default="", help="yaml overrides, e.g. '{batch_seconds: 60}'")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=time_split)
    p = sub.add_parser("attributes", help="attribute matches of t2a top-1 retrieval")
    p.add_argument("output_folder")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--overrides", default="", help="JSON overrides")
    p.set_defaults(func=attributes)
    p = sub.add_parser("zeroshot", help="first-sound zero-shot vs any of the clip's types")
    p.add_argument("output_folder")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--overrides", default="", help="JSON overrides")
    p.set_defaults(func=zeroshot)
    p = sub.add_parser("decoder_order", help="fresh decoders on frozen tokens, with/without time")
    p.add_argument("output_folder")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=decoder_order)
    p = sub.add_parser("onset", help="onset detection and the onset windows' zero-shot")
    p.add_argument("output_folder")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.25])
    p.add_argument("--windows", type=int, nargs="+", default=[3])
    p.add_argument("--overrides", default="", help="JSON overrides")
    p.set_defaults(func=onset)
    p = sub.add_parser("oracle", help="clips sharing a description")
    p.add_argument("data_folder")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.set_defaults(func=oracle)
    p = sub.add_parser("pooling", help="supervised sound-type probe under each pooling")
    p.add_argument("data_folder")
    p.add_argument("--pool", default="map", choices=("map", "mean", "max"))
    p.add_argument("--map_init", default="package", choices=("package", "small"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_seconds", type=float, default=120.0)
    p.add_argument("--n_train", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=pooling)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
