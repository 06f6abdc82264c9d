"""The ranks of tests/test_kd_vocab_parallel.py: each process holds a slice of the vocabulary, runs every
check case, and writes what it saw (per case: None, or the failure; per bad-input case: the error raised)."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

import mtkernels

from .spawn import run_cases


WORLD_SIZE = 2
N, H_S, H_T = 37, 16, 24
SLICES = (120, 181)  # uneven; V = 301 is no multiple of anything the chunks use
VOCAB = sum(SLICES)
MODES = ("self_evolution", "self_evolution_topk", "skew", "noevo", "forward_kd", "reverse_kd")
REDUCTIONS = ("mean", "sum", "none")


def make_case(seed=0, dtype=torch.float32, labels_in=None, n=N):
    """The full problem (every rank builds the same one): hidden states, heads, biases, labels."""
    g = torch.Generator().manual_seed(seed)
    case = dict(
        student_input=torch.randn(n, H_S, generator=g).to(dtype),
        student_weight=(torch.randn(VOCAB, H_S, generator=g) / H_S**0.5 * 2).to(dtype),
        teacher_input=torch.randn(n, H_T, generator=g).to(dtype),
        teacher_weight=(torch.randn(VOCAB, H_T, generator=g) / H_T**0.5 * 2).to(dtype),
        student_bias=(torch.randn(VOCAB, generator=g) * 0.1).to(dtype),
    )
    lo, hi = labels_in or (0, VOCAB)
    labels = torch.randint(lo, hi, (n,), generator=g)
    labels[::5] = -100
    case["labels"] = labels
    return case


def vocab_slice(rank, sizes=SLICES):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _grads(loss, tensors, weights=None):
    out = loss if weights is None else loss * weights
    out.sum().backward()
    return [t.grad for t in tensors]


def single_device(case, teacher_logits=False, grad_weights=None, **options):
    """The single-device loss on the full heads: loss, stats and gradients (input, weight, bias)."""
    h, w, b = (_leaf(case[k]) for k in ("student_input", "student_weight", "student_bias"))
    teacher = (dict(teacher_logits=torch.nn.functional.linear(case["teacher_input"], case["teacher_weight"]))
               if teacher_logits else dict(teacher_input=case["teacher_input"], teacher_weight=case["teacher_weight"]))
    loss, stats = mtkernels.self_evolution_kd_loss(h, w, labels=case["labels"], student_bias=b, return_stats=True,
                                                   backend="reference", **teacher, **options)
    return (loss.detach(), stats, *_grads(loss, (h, w, b), grad_weights))


def vocab_parallel(case, rank, teacher_logits=False, grad_weights=None, sizes=SLICES, **options):
    """This rank's call on its slices: loss, stats and gradients (input, weight slice, bias slice)."""
    cols = vocab_slice(rank, sizes)
    h = _leaf(case["student_input"])
    w, b = _leaf(case["student_weight"][cols]), _leaf(case["student_bias"][cols])
    if teacher_logits:
        logits = torch.nn.functional.linear(case["teacher_input"], case["teacher_weight"])
        teacher = dict(teacher_logits=logits[:, cols])
    else:
        teacher = dict(teacher_input=case["teacher_input"], teacher_weight=case["teacher_weight"][cols])
    loss, stats = mtkernels.self_evolution_kd_loss(h, w, labels=case["labels"], student_bias=b, return_stats=True,
                                                   vocab_parallel_group=dist.group.WORLD, **teacher, **options)
    return (loss.detach(), stats, *_grads(loss, (h, w, b), grad_weights))


def tolerances(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=2e-5, atol=2e-6)


def compare(got, want, rank, dtype=torch.float32, sizes=SLICES):
    """The vocabulary-parallel results of this rank against the single-device ones."""
    cols = vocab_slice(rank, sizes)
    tol = tolerances(dtype)
    torch.testing.assert_close(got[0], want[0], **tol, msg="loss")
    for name, a, b in zip(("num_valid", "num_hard"), got[1][:2], want[1][:2]):
        assert int(a) == int(b), f"{name}: {int(a)} != {int(b)}"
    torch.testing.assert_close(got[1].mean_difficulty, want[1].mean_difficulty, **tol, msg="mean difficulty")
    torch.testing.assert_close(got[2].float(), want[2].float(), **tol, msg="grad_input")
    torch.testing.assert_close(got[3].float(), want[3][cols].float(), **tol, msg="grad_weight slice")
    torch.testing.assert_close(got[4].float(), want[4][cols].float(), **tol, msg="grad_bias slice")


def same_on_every_rank(t):
    """``t`` all-gathered: every rank must hold exactly the same value."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    for p in parts[1:]:
        assert torch.equal(p, parts[0]), "ranks disagree"


# --- the cases ------------------------------------------------------------------------------------

def case_modes_and_reductions(rank):
    case = make_case(seed=1)
    for mode in MODES:
        for reduction in REDUCTIONS:
            weights = torch.linspace(0.5, 1.5, N) if reduction == "none" else None
            options = dict(mode=mode, reduction=reduction, chunk_size=8)
            got = vocab_parallel(case, rank, grad_weights=weights, **options)
            want = single_device(case, grad_weights=weights, **options)
            same_on_every_rank(got[0])
            try:
                compare(got, want, rank)
            except AssertionError as e:
                raise AssertionError(f"{mode}/{reduction}: {e}") from e


def case_topk_chooses_like_one_device(rank):
    """Many rows, so the ranking decides; the hard rows of both forms are the same rows."""
    case = make_case(seed=2, n=96)
    for fraction in (0.0, 0.3, 1.0):
        options = dict(mode="self_evolution_topk", hard_fraction=fraction, reduction="none", chunk_size=16)
        got, want = vocab_parallel(case, rank, **options), single_device(case, **options)
        same_on_every_rank(got[0])
        compare(got, want, rank)


def case_options(rank):
    """Temperature, num_items_in_batch, edge λ / β / Γ, the budget's chunk plan (chunk_size None)."""
    case = make_case(seed=3)
    for options in (dict(temperature=2.0), dict(temperature=0.5, mode="reverse_kd"), dict(num_items_in_batch=50),
                    dict(num_items_in_batch=torch.tensor(0)), dict(lam=0.0), dict(lam=1.0), dict(beta=1.0, mode="skew"),
                    dict(gamma=0.0), dict(lam=1.0, mode="reverse_kd"), dict(chunk_size=None),
                    dict(mode="forward_kd", lam=0.0), dict(mode="reverse_kd", lam=0.0)):
        try:
            compare(vocab_parallel(case, rank, chunk_size=5, **options) if "chunk_size" not in options
                    else vocab_parallel(case, rank, **options),
                    single_device(case, **options), rank)
        except AssertionError as e:
            raise AssertionError(f"{options}: {e}") from e


def case_slice_without_labels(rank):
    """Every label of the batch lies in rank 1's slice, then every one in rank 0's."""
    for lo, hi in ((SLICES[0], VOCAB), (0, SLICES[0])):
        case = make_case(seed=4, labels_in=(lo, hi))
        for mode in ("self_evolution", "skew", "reverse_kd"):
            compare(vocab_parallel(case, rank, mode=mode, chunk_size=8), single_device(case, mode=mode), rank)


def case_ignored_rows(rank):
    case = make_case(seed=5)
    case["labels"][:20] = -100
    compare(vocab_parallel(case, rank, chunk_size=8), single_device(case), rank)
    case["labels"][:] = -100  # no valid row: loss 0, zero gradients
    got = vocab_parallel(case, rank, chunk_size=8)
    compare(got, single_device(case), rank)
    assert float(got[0]) == 0.0 and not got[3].any()


def case_bf16(rank):
    case = make_case(seed=6, dtype=torch.bfloat16)
    for mode in ("self_evolution", "reverse_kd"):
        compare(vocab_parallel(case, rank, mode=mode, chunk_size=8), single_device(case, mode=mode), rank,
                dtype=torch.bfloat16)


def case_teacher_logits_and_from_logits(rank):
    case = make_case(seed=7)
    compare(vocab_parallel(case, rank, teacher_logits=True, chunk_size=8),
            single_device(case, teacher_logits=True), rank)
    # the logits form, with a masked (-inf) teacher vocabulary tail
    cols = vocab_slice(rank)
    student = torch.nn.functional.linear(case["student_input"], case["student_weight"], case["student_bias"])
    teacher = torch.nn.functional.linear(case["teacher_input"], case["teacher_weight"])
    teacher[:, -30:] = -float("inf")
    labels = case["labels"].clamp_max(VOCAB - 31)
    padded = student.clone()
    padded[:, -30:] = -float("inf")  # a padded vocabulary: masked in both
    sub_cases = [(m, r, student) for m in ("self_evolution", "self_evolution_topk", "forward_kd")
                 for r in ("mean", "none")]
    sub_cases += [("skew", "sum", padded), ("reverse_kd", "sum", padded)]
    for mode, reduction, logits in sub_cases:
        # the reference's autograd gives NaN gradients at -inf student logits; the fused CPU backend gives 0
        single = "auto" if logits is padded else "reference"
        s_full, s_part = _leaf(logits), _leaf(logits[:, cols])
        want, want_stats = mtkernels.self_evolution_kd_loss_from_logits(
            s_full, teacher, labels, mode=mode, reduction=reduction, return_stats=True, backend=single)
        got, got_stats = mtkernels.self_evolution_kd_loss_from_logits(
            s_part, teacher[:, cols], labels, mode=mode, reduction=reduction, return_stats=True, chunk_size=8,
            vocab_parallel_group=dist.group.WORLD)
        want.sum().backward()
        got.sum().backward()
        tol = tolerances(torch.float32)
        torch.testing.assert_close(got, want, **tol, msg=f"{mode}/{reduction}")
        assert int(got_stats.num_hard) == int(want_stats.num_hard)
        torch.testing.assert_close(s_part.grad, s_full.grad[:, cols], **tol, msg=f"{mode}/{reduction} gradient")


def case_module_and_local_input_grad(rank):
    """``mtkernels.nn.SelfEvolutionKDLoss(vocab_parallel_group=...)``; without the input-gradient sum,
    each rank's share adds up to the full gradient."""
    case = make_case(seed=8)
    cols = vocab_slice(rank)
    want = single_device(case, mode="skew")
    for reduce in (True, False):
        module = mtkernels.nn.SelfEvolutionKDLoss(mode="skew", chunk_size=8, vocab_parallel_group=dist.group.WORLD,
                                                  vocab_parallel_reduce_grad_input=reduce)
        h, w, b = _leaf(case["student_input"]), _leaf(case["student_weight"][cols]), _leaf(case["student_bias"][cols])
        loss = module(h, w, case["teacher_input"], case["teacher_weight"][cols], case["labels"], student_bias=b)
        loss.backward()
        torch.testing.assert_close(loss.detach(), want[0], **tolerances(torch.float32))
        grad_input = h.grad.clone()
        if not reduce:
            dist.all_reduce(grad_input)
        torch.testing.assert_close(grad_input, want[2], **tolerances(torch.float32))
        torch.testing.assert_close(w.grad, want[3][cols], **tolerances(torch.float32))


def case_inputs_not_modified(rank):
    case = make_case(seed=9)
    cols = vocab_slice(rank)
    args = dict(student_input=case["student_input"], student_weight=case["student_weight"][cols].clone(),
                teacher_input=case["teacher_input"], teacher_weight=case["teacher_weight"][cols].clone(),
                labels=case["labels"], student_bias=case["student_bias"][cols].clone())
    before = {k: v.clone() for k, v in args.items()}
    mtkernels.self_evolution_kd_loss(**args, mode="self_evolution_topk", chunk_size=8,
                                     vocab_parallel_group=dist.group.WORLD)
    for k, v in before.items():
        assert torch.equal(v, args[k]), k


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


# --- bad input: every rank must raise the same error ------------------------------------------------

def _call(rank, change):
    case = make_case(seed=10)
    cols = vocab_slice(rank)
    args = dict(student_input=case["student_input"], student_weight=case["student_weight"][cols],
                teacher_input=case["teacher_input"], teacher_weight=case["teacher_weight"][cols],
                labels=case["labels"], chunk_size=8, vocab_parallel_group=dist.group.WORLD)
    args.update(change(rank, case))
    mtkernels.self_evolution_kd_loss(**args)


BAD = {
    # rank 1's teacher slice is one row short: the student's and teacher's slices do not add up
    "slices_do_not_add_up": (lambda r, c: dict(teacher_weight=c["teacher_weight"][vocab_slice(r)][:-1]) if r == 1
                             else {}),
    "label_out_of_global_range": (lambda r, c: dict(labels=c["labels"].clone().index_fill_(0, torch.tensor([3]),
                                                                                          VOCAB))),
    "labels_differ_between_ranks": (lambda r, c: dict(labels=c["labels"].roll(r))),
    "rows_differ_between_ranks": (lambda r, c: dict(student_input=c["student_input"][:N - r],
                                                    teacher_input=c["teacher_input"][:N - r],
                                                    labels=c["labels"][:N - r])),
    "bad_dtype_on_one_rank": (lambda r, c: dict(student_input=c["student_input"].double()) if r == 0 else {}),
    "dtensor_weight": (lambda r, c: dict(student_weight=_dtensor(c["student_weight"]))),
    "not_a_group": (lambda r, c: dict(vocab_parallel_group="world")),
    "options_differ_between_ranks": (lambda r, c: dict(lam=0.5 + 0.1 * r)),
}


def _dtensor(weight):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    return distribute_tensor(weight[:SLICES[0] * 2].contiguous(), mesh, [Shard(0)])


def _bad_inputs(rank):
    seen = {}
    for name, change in BAD.items():
        try:
            _call(rank, change)
            seen[name] = None
        except Exception as e:  # what every rank raised, for the test to compare
            seen[name] = (type(e).__name__, str(e))
    return seen


def worker(rank, store_path, out_dir):
    run_cases(rank, store_path, out_dir, WORLD_SIZE, {name: functools.partial(fn, rank) for name, fn in CASES.items()},
              extra=lambda: {"bad_inputs": _bad_inputs(rank)}, barrier_each=False)
