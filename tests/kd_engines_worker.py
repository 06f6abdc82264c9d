"""The ranks of tests/test_kd_engines.py: a tiny student distilled from a fixed teacher head for a few
SGD steps under DDP and under FSDP2 (``fully_shard``), each rank on its half of the batch, against the
same steps in one process on the whole batch."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

import mtkernels

from .spawn import run_cases


WORLD_SIZE = 2
VOCAB, HIDDEN, TEACHER_HIDDEN, ROWS, STEPS, LR = 301, 16, 24, 24, 3, 0.5


class Student(torch.nn.Module):
    """Embedding, one hidden layer, an lm_head whose weight the fused loss reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.body = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh())
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids):
        return self.body(self.embed(ids))

    def kd_loss(self, ids, labels, teacher_hidden, teacher_weight):
        """The loss where the engine has the parameters whole (FSDP2: registered as a forward method)."""
        weight = self.lm_head.weight
        self.__dict__.setdefault("weights_seen", []).append((type(weight.data), tuple(weight.shape)))
        return mtkernels.self_evolution_kd_loss(self(ids), weight, teacher_hidden, teacher_weight,
                                                labels, mode="self_evolution", gamma=0.3, chunk_size=5)


class KDStep(torch.nn.Module):
    """The loss as a module's forward, for engines that hook ``forward`` (DDP)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, ids, labels, teacher_hidden, teacher_weight):
        return self.student.kd_loss(ids, labels, teacher_hidden, teacher_weight)


def batches():
    g = torch.Generator().manual_seed(1)
    teacher_weight = torch.randn(VOCAB, TEACHER_HIDDEN, generator=g) / TEACHER_HIDDEN**0.5 * 3
    out = []
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (ROWS,), generator=g)
        labels = torch.randint(0, VOCAB, (ROWS,), generator=g)  # no ignored label: equal counts per rank
        out.append((ids, labels, torch.randn(ROWS, TEACHER_HIDDEN, generator=g)))
    return teacher_weight, out


def train(step_loss, params, rows: slice):
    """``STEPS`` SGD steps on ``rows`` of each batch; the loss of each step."""
    teacher_weight, data = batches()
    optimizer = torch.optim.SGD(params, lr=LR)
    losses = []
    for ids, labels, teacher_hidden in data:
        optimizer.zero_grad()
        loss = step_loss(ids[rows], labels[rows], teacher_hidden[rows], teacher_weight)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def one_process():
    student = Student()
    losses = train(student.kd_loss, student.parameters(), slice(None))
    return losses, {k: v.detach() for k, v in student.state_dict().items()}


def _my_rows(rank):
    half = ROWS // WORLD_SIZE
    return slice(rank * half, (rank + 1) * half)


def _mean_over_ranks(losses):
    losses = losses.clone()
    dist.all_reduce(losses)
    return losses / WORLD_SIZE


def _check(losses, state, want):
    want_losses, want_state = want
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-6, msg="losses")
    assert want_state.keys() == state.keys()
    for name, value in want_state.items():
        torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(value, Student().state_dict()[name]), f"{name} did not train"


def case_ddp(rank, want):
    student = Student()
    model = torch.nn.parallel.DistributedDataParallel(KDStep(student))
    losses = train(model, model.parameters(), _my_rows(rank))
    _check(_mean_over_ranks(losses), {k: v.detach() for k, v in student.state_dict().items()}, want)


def case_fsdp2(rank, want):
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import DTensor

    unregistered = Student()
    fully_shard(unregistered)
    teacher_weight, [(ids, labels, teacher_hidden), *_] = batches()
    try:  # outside a registered method the loss meets the sharded weight: a clear error
        unregistered.kd_loss(ids, labels, teacher_hidden, teacher_weight)
        raise AssertionError("a DTensor lm_head weight was accepted")
    except TypeError as e:
        assert "student_weight: a DTensor" in str(e) and "register_fsdp_forward_method" in str(e), str(e)

    student = Student()
    fully_shard(student.body)
    fully_shard(student)  # the root: embedding and lm_head
    register_fsdp_forward_method(student, "kd_loss")  # the loss sees lm_head whole, once per step
    assert isinstance(student.lm_head.weight, DTensor), "lm_head.weight is not sharded"
    assert all(isinstance(p, DTensor) for p in student.parameters())
    losses = train(student.kd_loss, student.parameters(), _my_rows(rank))
    # each step's loss read the whole lm_head weight, a plain tensor, once
    assert student.weights_seen == [(torch.Tensor, (VOCAB, HIDDEN))] * STEPS, student.weights_seen
    state = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach() for k, v in student.state_dict().items()}
    _check(_mean_over_ranks(losses), state, want)


CASES = {"ddp": case_ddp, "fsdp2": case_fsdp2}


def worker(rank, store_path, out_dir):
    def calls():
        want = one_process()
        return {name: (lambda fn=fn: fn(rank, copy.deepcopy(want))) for name, fn in CASES.items()}

    run_cases(rank, store_path, out_dir, WORLD_SIZE, calls, barrier_each=False)
