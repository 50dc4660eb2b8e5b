"""Two CPU processes (gloo) give the loss and gradients of one process on the full batch; torchrun trains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from cmp_utils.training import distributed
from cmp_utils import losses, models, training

GLOBAL_BATCH, FEATURE_DIM, VOCAB, EMBEDDING_DIM, NUM_CLASSES = 8, 12, 30, 16, 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inputs():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(GLOBAL_BATCH, FEATURE_DIM, generator=generator)  # cached image features
    lengths = torch.randint(2, 7, (GLOBAL_BATCH,), generator=generator)
    token_ids = torch.randint(4, VOCAB, (GLOBAL_BATCH, 6), generator=generator)
    token_ids[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 4, 0])  # positives across the two halves
    return features, token_ids, lengths, labels


def _step_module():
    torch.manual_seed(0)
    model = models.build_model(
        VOCAB, embedding_dim=EMBEDDING_DIM, word_dim=8, hidden_size=6, dropout=0.0, cached_feature_dim=FEATURE_DIM
    )
    loss_module = losses.CrossModalLoss(("cmpm", "cmpc"), EMBEDDING_DIM, NUM_CLASSES)
    return training.TrainStep(model, loss_module)


def _gradients_and_loss(world_size: int, rank: int):
    step_module = _step_module()
    wrapped = step_module
    if world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(step_module)
    features, token_ids, lengths, labels = _inputs()
    rows = training.local_slice(list(range(GLOBAL_BATCH)), rank, world_size)
    length = int(lengths[rows].max())
    loss_terms = wrapped(features[rows], token_ids[rows, :length], lengths[rows], labels[rows])
    total = training.backward_global_loss(loss_terms, step_module, world_size)
    gradients = {name: p.grad.clone() for name, p in step_module.named_parameters() if p.grad is not None}
    return float(total.detach()), gradients


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    # A file store, not rank 0's TCP store server: no server thread to race with the other rank's
    # exit at teardown (a rare gloo abort seen in CI). setup() then finds the group started.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank, world_size=world_size
    )
    context = distributed.setup("cpu")
    try:
        assert context.world_size == world_size and distributed.rank() == rank
        local = (torch.arange(3.0) + 10 * rank).requires_grad_()  # gather keeps only local gradients
        gathered = distributed.all_gather_with_grad(local.view(3, 1))
        (gathered.squeeze(1) * torch.arange(6.0)).sum().backward()
        loss, gradients = _gradients_and_loss(world_size, rank)
        torch.save(
            {"loss": loss, "gradients": gradients, "gathered": gathered.detach(), "local_grad": local.grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        torch.distributed.barrier()  # both ranks done communicating before either tears down
    finally:
        distributed.cleanup()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    reference_loss, reference_gradients = _gradients_and_loss(1, 0)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(saved["gathered"].squeeze(1), torch.tensor([0.0, 1, 2, 10, 11, 12]))
        torch.testing.assert_close(saved["local_grad"], torch.arange(3.0) + 3 * rank)  # its own rows only
        assert saved["loss"] == pytest.approx(reference_loss, rel=1e-5)
        assert set(saved["gradients"]) == set(reference_gradients)
        for name, gradient in reference_gradients.items():
            # sums accumulated in another order across the two processes: float32 rounding of the order of
            # 1e-5 of the tensor's largest entry (measured 7e-6 on the learned initial cell), so the absolute
            # tolerance scales with the tensor
            scale = max(1.0, float(gradient.abs().max()))
            torch.testing.assert_close(saved["gradients"][name], gradient, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_local_slice_needs_an_even_split():
    assert training.local_slice([5, 6, 7, 8], 1, 2) == [7, 8]
    with pytest.raises(ValueError, match="multiple"):
        training.local_slice([1, 2, 3], 0, 2)


def test_single_process_helpers():
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    tensor = torch.ones(2, requires_grad=True)
    assert distributed.all_gather_with_grad(tensor) is tensor
    context = distributed.setup("cpu")
    assert not context.enabled and context.device.type == "cpu"


@pytest.mark.slow
def test_torchrun_smoke_training_two_processes(isolated_dirs, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "cmp_utils.training",
        "--profile",
        "smoke",
        "--dataset",
        "cuhk_pedes",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--no-progress",
        "--losses",
        "cmpm,cmpc",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["history"][0]["epoch"] == 1 and results["history"][0]["loss"] > 0
    params = (out / "params.yaml").read_text()
    assert "world_size: 2" in params


def test_batches_are_checked_before_training():
    cfg = training.make_config("smoke", "cuhk_pedes", batch_size=6)
    training.check_batches(cfg, num_captions=40, world_size=2, steps=6)  # 6 rows: 3 per process
    with pytest.raises(ValueError, match="multiple of the number of processes 4"):
        training.check_batches(cfg, num_captions=40, world_size=4, steps=6)
    with pytest.raises(ValueError, match=r"batch_size=6 is larger than what the training split .*\(4 captions"):
        training.check_batches(cfg, num_captions=4, world_size=1, steps=0)
