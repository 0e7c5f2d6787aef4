"""ClapLoss under DDP: two gloo CPU processes reproduce the single-process global-batch loss.

Gradient bookkeeping checked here (open_clip's ``gather_with_grad`` contract):
every rank gathers all embeddings with ``torch.distributed.nn.functional.all_gather``
and computes the FULL global loss ``L``. The backward of that all_gather sums the
gradient arriving at each gathered shard over all ranks, so rank r's own shard
receives ``world_size * dL/dx_r``. DDP then averages parameter gradients over the
ranks (divides the sum by ``world_size``), which yields exactly the single-process
gradient ``dL/dtheta``. The logit scale is not gathered, so its gradient on every
rank is already the single-process one (and DDP's average leaves it unchanged).
"""

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from speechbrain_slap.losses import ClapLoss

WORLD_SIZE = 2
GLOBAL_BATCH = 6
DIM = 8
FEAT = 5


def global_batch():
    """The fixed global batch: audio/text embeddings and input features for the projections."""
    g = torch.Generator().manual_seed(1234)
    audio = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    text = torch.randn(GLOBAL_BATCH, DIM, generator=g)
    audio_feats = torch.randn(GLOBAL_BATCH, FEAT, generator=g)
    text_feats = torch.randn(GLOBAL_BATCH, FEAT, generator=g)
    return audio, text, audio_feats, text_feats


class TinyClap(nn.Module):
    """Two linear projections and a ClapLoss: the part of the Brain that DDP wraps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.audio_proj = nn.Linear(FEAT, DIM)
        self.text_proj = nn.Linear(FEAT, DIM)
        self.clap = ClapLoss()

    def forward(self, audio_feats, text_feats):
        return self.clap(self.audio_proj(audio_feats), self.text_proj(text_feats))


def _worker(rank, world_size, port, out_dir, bounds):
    """One rank: ClapLoss on its shard of embeddings, then a DDP-wrapped projection model."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    try:
        audio, text, audio_feats, text_feats = global_batch()
        shard = slice(bounds[rank], bounds[rank + 1])

        # (1) Leaf embeddings: loss value and per-shard gradients.
        loss_fn = ClapLoss()
        a = audio[shard].clone().requires_grad_(True)
        t = text[shard].clone().requires_grad_(True)
        loss = loss_fn(a, t)
        loss.backward()

        # (2) Projections inside DistributedDataParallel: averaged parameter gradients.
        model = nn.parallel.DistributedDataParallel(TinyClap())
        ddp_loss = model(audio_feats[shard], text_feats[shard])
        ddp_loss.backward()
        ddp_grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}

        torch.save(
            {
                "loss": loss.item(),
                "audio_grad": a.grad,
                "text_grad": t.grad,
                "logit_scale_grad": loss_fn.logit_scale.grad.clone(),
                "ddp_loss": ddp_loss.item(),
                "ddp_grads": ddp_grads,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(out_dir, bounds, timeout_s=90.0):
    """Runs the workers; kills them (only them) if they do not finish in time."""
    import torch.multiprocessing as mp

    context = mp.spawn(
        _worker,
        args=(WORLD_SIZE, _free_port(), str(out_dir), bounds),
        nprocs=WORLD_SIZE,
        join=False,
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"DDP workers did not finish within {timeout_s} s")


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is unavailable",
)
# Equal shards, and the unequal ones a duration budget gives (2 clips on rank 0, 4 on rank 1).
@pytest.mark.parametrize("bounds", [(0, 3, 6), (0, 2, 6)], ids=["equal", "unequal"])
def test_ddp_clap_matches_single_process(tmp_path, bounds):
    """Loss = global single-process loss; shard grad = world_size x single; DDP grads = single."""
    _spawn(tmp_path, bounds)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    audio, text, audio_feats, text_feats = global_batch()
    loss_fn = ClapLoss()
    a = audio.clone().requires_grad_(True)
    t = text.clone().requires_grad_(True)
    single = loss_fn(a, t)
    single.backward()

    model = TinyClap()
    single_ddp = model(audio_feats, text_feats)
    single_ddp.backward()

    for rank, res in enumerate(results):
        rows = slice(bounds[rank], bounds[rank + 1])
        # (a) every rank's loss is the global-batch loss
        assert abs(res["loss"] - single.item()) <= 1e-6
        # (b) its own shard receives world_size x the single-process gradient of those rows
        torch.testing.assert_close(
            res["audio_grad"], WORLD_SIZE * a.grad[rows], atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            res["text_grad"], WORLD_SIZE * t.grad[rows], atol=1e-6, rtol=1e-5
        )
        # (c) the logit scale's gradient is the single-process one
        torch.testing.assert_close(
            res["logit_scale_grad"], loss_fn.logit_scale.grad, atol=1e-6, rtol=1e-5
        )
        # (d) after DDP's averaging every parameter gradient is the single-process one
        assert abs(res["ddp_loss"] - single_ddp.item()) <= 1e-6
        for name, param in model.named_parameters():
            torch.testing.assert_close(
                res["ddp_grads"][name], param.grad, atol=1e-6, rtol=1e-5, msg=name
            )
    assert a.grad.abs().sum() > 0 and loss_fn.logit_scale.grad.abs() > 0
