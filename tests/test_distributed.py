"""The Runtime's collective operations on two real gloo processes (what Ray Train workers use),
without Ray: averaged gradients, broadcast weights, disjoint data shards, and a short stage-2
run that leaves both ranks with identical networks."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from diffseg.runtime import Runtime


def _worker(rank: int, world: int, init_file: str, out_dir: str, tiny: dict | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rt = Runtime(rank=rank, world_size=world, amp=False)
        out = {}
        torch.manual_seed(rank)  # different start on every rank
        net = nn.Linear(3, 2)
        rt.broadcast_state(net)
        out["weights"] = net.weight.detach().flatten().tolist()
        x = torch.full((4, 3), float(rank + 1))
        net(x).sum().backward()
        out["own_grad"] = net.weight.grad.flatten().tolist()
        rt.sync_gradients(net.parameters())
        out["synced_grad"] = net.weight.grad.flatten().tolist()
        loader = rt.loader(list(range(10)), 2, shuffle=True, seed=0, epoch=3)
        out["shard"] = [int(i) for batch in loader for i in batch]
        out["mean"] = rt.mean(float(rank))
        if tiny is not None:
            from diffseg import config
            from diffseg.loop import Loop

            cfg = config.from_dict(tiny)
            loop = Loop(cfg, f"{out_dir}/run", rt, log=lambda m: None)
            loop.fit()
            for name, net in loop.method.networks.items():
                out[name] = [float(p.detach().sum()) for p in net.parameters()]
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(out, fh)
        # both ranks done before either tears gloo down: a rank whose peer destroyed the group
        # mid-exchange can abort in gloo's threads ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_two(tmp_path, tiny=None) -> list[dict]:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), tiny), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_gloo_ranks_average_gradients_and_stay_in_sync(tmp_path, tiny_cfg):
    from diffseg import config

    r0, r1 = run_two(tmp_path, config.to_dict(tiny_cfg))
    assert r0["weights"] == r1["weights"]  # rank 0's start reached rank 1
    expected = [(a + b) / 2 for a, b in zip(r0["own_grad"], r1["own_grad"])]
    assert r0["own_grad"] != r1["own_grad"]
    for got in (r0["synced_grad"], r1["synced_grad"]):
        assert all(abs(g - e) < 1e-6 for g, e in zip(got, expected))
    assert sorted(r0["shard"] + r1["shard"]) == list(range(10)) and not set(r0["shard"]) & set(r1["shard"])
    assert r0["mean"] == r1["mean"] == 0.5
    # a whole two-stage run on two ranks ends with the same networks on both and a summary
    assert r0["teacher"] == r1["teacher"] and r0["student"] == r1["student"]
    assert (tmp_path / "run" / "summary.json").exists()
