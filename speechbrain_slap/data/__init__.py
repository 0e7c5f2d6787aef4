"""Data for SLAP: audio reading, manifests, dataset pipelines, shards, the embedded corpus.

* ``audio``: the one audio reader (files, shard bytes, duration probe).
* ``manifest``: reading, checking and writing manifests.
* ``pipelines``: SpeechBrain datasets and loaders over caption manifests.
* ``batching``: batches by summed seconds.
* ``shards`` and ``stream``: WebDataset shards, written and streamed.
* ``synthetic`` and ``espeak``: generated corpora.
"""
