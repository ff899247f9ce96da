"""The strategy object (``mo_rl/train/strategy.py``) and the one checkpoint writer it plugs into.

Two ranks under ddp and fsdp are tests/test_distributed.py and tests/test_fsdp.py; here: a one-process strategy
changes nothing in a step (no collective runs: there is no process group), the writer's manifest covers every
file a strategy writes (shards it did not checksum while writing included), and a checkpoint resumes only under
the strategy that wrote it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.train import distributed as dp
from mo_rl.train.checkpoint import StateFile, load_checkpoint, save_checkpoint, verify_checkpoint
from mo_rl.train.loop import run_train
from mo_rl.train.strategy import DDP, FSDP, make_strategy
from tests.conftest import compose_run

BASE = ["trainer.steps=1", "trainer.batch_prompts=2", "trainer.group_size=2"]


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_one_process_step_is_left_as_computed(name):
    s = make_strategy(name, dp.Dist(), torch.device("cpu"))
    assert type(s) is {"ddp": DDP, "fsdp": FSDP}[name] and s.lead and s.writes_checkpoints
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    grad = model.weight.grad.clone()
    stats = {"loss/pg": 0.25, "kl": 0.125}
    assert s.reduce(model, 0.5, stats, (1.0, 1.0)) == (0.5, stats)
    torch.testing.assert_close(model.weight.grad, grad, rtol=0, atol=0)  # no all-reduce scaled it
    assert s.loss_scale((1.0, 1.0)) == 1.0
    assert s.micro_batch_size(None, SimpleNamespace(micro_batch_size=3, micro_batch_tokens=64)) == 3
    assert s.micro_batch_size(None, SimpleNamespace(micro_batch_size=0, micro_batch_tokens=64)) == 0  # by tokens
    assert s.grad_norm(torch.tensor(1.5)) == 1.5


class _WithShard(StateFile):
    """A store that writes a file beside state.pt without checksumming it as it writes (as DCP's shards)."""

    def write_state(self, tmp, state):
        (tmp / "dcp").mkdir()
        (tmp / "dcp" / "0.distcp").write_bytes(b"shard bytes")
        return super().write_state(tmp, state)


def test_manifest_lists_every_file_a_store_writes(tmp_path):
    root = tmp_path / "checkpoints"
    path = save_checkpoint(root, 3, {"w": torch.tensor([2.0])}, {"elapsed": 1.5}, keep=1, store=_WithShard())
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert sorted(files) == ["dcp/0.distcp", "meta.json", "state.pt"]
    assert files["dcp/0.distcp"]["size"] == len(b"shard bytes")
    assert verify_checkpoint(path) is None
    state, meta = load_checkpoint(path)
    assert meta == {"step": 3, "elapsed": 1.5} and torch.equal(state["w"], torch.tensor([2.0]))
    (path / "dcp" / "0.distcp").write_bytes(b"shard bytez")  # same size, other bytes
    assert verify_checkpoint(path) == "dcp/0.distcp does not match its checksum"


def test_fsdp_checkpoint_does_not_resume_as_ddp(tmp_path, tiny_model_path):
    """The other way round from test_fsdp's: meta.json names the strategy that wrote a checkpoint."""
    run_train(compose_run(tmp_path, *BASE, "trainer.strategy=fsdp"))
    path = tmp_path / "default" / "r"
    meta = json.loads((path / "checkpoints" / "step-1" / "meta.json").read_text())
    assert (meta["strategy"], meta["world"]) == ("fsdp", 1)
    cfg = (path / "config.yaml").read_text().replace("strategy: fsdp", "strategy: ddp")
    (path / "config.yaml").write_text(cfg)
    with pytest.raises(MoRLError, match=r"not written with trainer.strategy=ddp \(it was with fsdp\)"):
        run_train(compose_run(tmp_path, *BASE[1:], "trainer.steps=2"))
