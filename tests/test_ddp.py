"""Multi-process training: 2 ranks on CPU with gloo end with identical weights, and (keypoint mode, where the
loss has no cross-pair terms) match a single-process run with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scc import train as T

SETS = ["dataset=synthetic", "img_size=64", "batch_size=4", "steps=3", "num_pairs=16", "ckpt_every=100",
        "log_every=1", "model.proj_dim=16", "model.vote_radius=1", "warmup_steps=1", "tensorboard=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainable(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def _worker(rank, world, port, sets, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        tr = T.Trainer(T.cfgmod.load(T.TrainConfig, None, sets))
        tr.run(progress=False)
        torch.save(_trainable(tr.model), os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("mode,extra", [("strong", []), ("weak", []),
                                        # consensus weights act after the features: inside the loss
                                        ("weak", ["model.neigh_consensus=true", "model.nc_channels=2"])],
                         ids=["strong", "weak", "weak-consensus"])
def test_two_ranks_with_gloo(tmp_path, mode, extra):
    sets = SETS + extra + [f"mode={mode}", f"out={tmp_path / 'run'}"]
    mp.spawn(_worker, args=(2, _free_port(), sets, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)  # identical weights on every rank
    assert (tmp_path / "run" / "model.pt").is_file()  # rank 0 checkpointed
    if mode == "strong":
        single = T.Trainer(T.cfgmod.load(T.TrainConfig, None, sets[:-1] + [f"out={tmp_path / 'single'}"]))
        single.run(progress=False)
        ws = _trainable(single.model)
        for k in r0:
            torch.testing.assert_close(r0[k], ws[k], rtol=1e-4, atol=1e-5, msg=k)
