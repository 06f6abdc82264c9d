"""Each fused backend's collab kernel primitives against their reference definitions."""

import pytest
import torch

from mtkernels import backends
from mtkernels.gumbel import row_keys
from mtkernels.reference import kernels as ref

from .conftest import device_for
from .test_collab import assert_topk_ids

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(batch, vocab, dtypes, device, seed=0, extra_cols=0, mask_frac=0.0):
    """(logits, p): p = (weights (B, M), temperature (B,)) with some rows at temperature 1."""
    g = torch.Generator().manual_seed(seed)
    logits = []
    for m, dtype in enumerate(dtypes):
        x = torch.randn(batch, vocab + extra_cols * m, generator=g) * (2.0 + m)
        if mask_frac:
            x[torch.rand(x.shape, generator=g) < mask_frac] = float("-inf")
        logits.append(x.to(dtype).to(device))
    weights = (torch.rand(batch, len(dtypes), generator=g) * 2 - 0.5).to(device)
    temperature = torch.rand(batch, generator=g) * 1.5 + 0.3
    temperature[::2] = 1.0
    return logits, (weights, temperature.to(device))


def _cpu(p):
    return tuple(t.cpu() for t in p)


def _k(backend, name):
    return backends.kernel("collab", name, backend)


@pytest.mark.parametrize("vocab", [1, 7, 1000, 4099])
@pytest.mark.parametrize("dtypes", [[torch.float32], [torch.bfloat16, torch.float16], DTYPES])
@pytest.mark.parametrize("k", [1, 5, 64])
def test_topk_matches_reference(fused_backend, vocab, dtypes, k):
    k = min(k, vocab)
    device = device_for(fused_backend)
    logits, p = _inputs(3, vocab, dtypes, device, extra_cols=3)
    values, ids, lse = _k(fused_backend, "topk")(logits, *p, vocab, k)
    rv, _, rlse = ref.topk([x.cpu() for x in logits], *_cpu(p), vocab, k)
    torch.testing.assert_close(lse.cpu(), rlse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.cpu(), rv, rtol=1e-5, atol=1e-5)
    assert ids.dtype == torch.int64 and values.dtype == torch.float32
    assert_topk_ids(ids, ref.logits([x.cpu() for x in logits], *_cpu(p), vocab), k)


@pytest.mark.parametrize("batch", [1, 2, 9])
def test_topk_large_vocab_small_batch(fused_backend, batch):
    vocab = 32000 + 7
    device = device_for(fused_backend)
    logits, p = _inputs(batch, vocab, [torch.float32, torch.bfloat16], device, seed=3)
    for k in (1, 50, 1024):
        values, ids, lse = _k(fused_backend, "topk")(logits, *p, vocab, k)
        rv, _, rlse = ref.topk([x.cpu() for x in logits], *_cpu(p), vocab, k)
        torch.testing.assert_close(lse.cpu(), rlse, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values.cpu(), rv, rtol=1e-5, atol=1e-5)
        assert_topk_ids(ids, ref.logits([x.cpu() for x in logits], *_cpu(p), vocab), k)


def test_topk_ties_masks_and_short_rows(fused_backend):
    device = device_for(fused_backend)
    vocab = 300
    x = torch.randint(-3, 3, (4, vocab)).float()  # many exact ties
    x[1, 10:] = float("-inf")  # only 10 finite tokens, k larger than that
    x[2, :] = float("-inf")
    x[2, 299] = 0.0  # a single finite token at the end
    y = torch.randn(4, vocab)
    y[3, ::2] = float("-inf")  # masked in the second model only: masked in z
    weights = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, -1.0]])
    tau = torch.tensor([1.0, 0.5, 1.0, 2.0])
    logits = [x.to(device), y.to(device)]
    values, ids, lse = _k(fused_backend, "topk")(logits, weights.to(device), tau.to(device), vocab, 20)
    rv, rids, rlse = ref.topk([x, y], weights, tau, vocab, 20)
    torch.testing.assert_close(lse.cpu(), rlse)
    torch.testing.assert_close(values.cpu(), rv)
    assert torch.equal(ids.cpu(), rids)


def test_nan_and_all_masked_rows_give_non_finite_lse(fused_backend):
    device = device_for(fused_backend)
    x = torch.randn(3, 100)
    x[0, 17] = float("nan")
    x[1, :] = float("-inf")
    _, _, lse = _k(fused_backend, "topk")([x.to(device)], torch.ones(3, 1, device=device), torch.ones(3, device=device), 100,
                                       4)
    assert torch.isnan(lse[0]) and lse[1] == float("-inf") and torch.isfinite(lse[2])


@pytest.mark.parametrize("dtypes", [[torch.float32], DTYPES])
def test_logits_matches_reference(fused_backend, dtypes):
    device = device_for(fused_backend)
    logits, p = _inputs(5, 1031, dtypes, device, extra_cols=5, mask_frac=0.01)
    z = _k(fused_backend, "logits")(logits, *p, 1031)
    # bit-identical: float32 of the reference's float64 z, temperature 1 or not
    assert torch.equal(z.cpu(), ref.logits([x.cpu() for x in logits], *_cpu(p), 1031))


@pytest.mark.parametrize("vocab", [13, 4099])
def test_threshold_mass_matches_reference(fused_backend, vocab):
    device = device_for(fused_backend)
    logits, p = _inputs(4, vocab, [torch.float32, torch.float16], device, seed=5, mask_frac=0.05)
    # The backend's own z: thresholds must be compared with values computed the way the kernel does.
    z = _k(fused_backend, "logits")(logits, *p, vocab).cpu()
    lse = torch.logsumexp(z.double(), dim=1).float()
    # thresholds that are exact z values (ties at the boundary count as >=), -inf, and above the max
    picks = torch.randint(0, vocab, (4, 5))
    thresholds = torch.cat([z.gather(1, picks), torch.full((4, 1), float("-inf")), z.amax(1, keepdim=True) + 1], 1)
    mass, count = _k(fused_backend, "threshold_mass")(logits, *p, vocab, thresholds.to(device), lse.to(device))
    above = z.unsqueeze(1) >= thresholds.unsqueeze(2)  # (B, T, V)
    expected = (above * torch.exp(z.double() - lse.double().unsqueeze(1)).unsqueeze(1)).sum(-1).float()
    torch.testing.assert_close(mass.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert count.dtype == torch.int64 and torch.equal(count.cpu(), above.sum(-1))


@pytest.mark.parametrize("vocab", [13, 4099, 32000])
def test_gumbel_argmax_matches_reference(fused_backend, vocab):
    device = device_for(fused_backend)
    batch = 16
    logits, p = _inputs(batch, vocab, [torch.float32, torch.bfloat16], device, seed=7, mask_frac=0.02)
    z = ref.logits([x.cpu() for x in logits], *_cpu(p), vocab)
    threshold = torch.quantile(z.clamp_min(-1e4), 0.9, dim=1)
    threshold[0] = float("-inf")
    keys = row_keys(batch, torch.device("cpu"), torch.Generator().manual_seed(11))
    ids, zs = _k(fused_backend, "gumbel_argmax")(logits, *p, vocab, threshold.to(device), keys.to(device))
    rids, rzs = ref.gumbel_argmax([x.cpu() for x in logits], *_cpu(p), vocab, threshold, keys)
    assert torch.equal(ids.cpu(), rids)
    torch.testing.assert_close(zs.cpu(), rzs, rtol=1e-5, atol=1e-5)


def test_kernels_do_not_modify_inputs(fused_backend):
    device = device_for(fused_backend)
    logits, p = _inputs(2, 517, DTYPES, device, mask_frac=0.01)
    before = [x.clone() for x in logits] + [t.clone() for t in p]
    _k(fused_backend, "topk")(logits, *p, 517, 8)
    _k(fused_backend, "logits")(logits, *p, 517)
    for a, b in zip(before, logits + list(p)):
        assert torch.equal(a, b)


def _tied_inputs(device, batch=4, vocab=1031):
    """Logits from four values (many exact ties), two models, one row fully tied."""
    g = torch.Generator().manual_seed(21)
    table = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    x = table[torch.randint(0, 4, (batch, vocab), generator=g)]
    y = table[torch.randint(0, 4, (batch, vocab), generator=g)].to(torch.bfloat16)
    x[1] = 0.25
    x[2, :7] = float("-inf")
    weights = torch.tensor([[1.0, 0.5]] * batch)
    temperature = torch.tensor([1.0, 0.5, 2.0, 1.0])[:batch]
    return [x.to(device), y.to(device)], (weights.to(device), temperature.to(device))


def test_threshold_mass_keep_sets_with_id_cuts(fused_backend):
    """(theta, cut) keeps z > theta and z == theta for ids <= cut: masses and exact counts against
    the reference, for cuts before, inside and after a tie group, the default (every tie), and NaN
    thresholds (nothing; a row of NaN thresholds is skipped)."""
    device = device_for(fused_backend)
    logits, p = _tied_inputs(device)
    cpu_logits, cpu_p = [x.cpu() for x in logits], _cpu(p)
    z = ref.logits(cpu_logits, *cpu_p, 1031)
    lse = torch.logsumexp(z.double(), 1).float()
    theta = z.gather(1, torch.tensor([[0, 100, 500, 900, 1030, 3]] * 4))  # tie values (z of given tokens)
    cuts = torch.tensor([[-1, 0, 517, 1030, 2000, 700]] * 4)
    theta[3] = float("nan")  # skipped row
    theta[0, 5] = float("nan")
    for id_cuts in (cuts, None):
        mass, count = _k(fused_backend, "threshold_mass")(logits, *p, 1031, theta.to(device), lse.to(device),
                                                          None if id_cuts is None else id_cuts.to(device))
        rmass, rcount = ref.threshold_mass(cpu_logits, *cpu_p, 1031, theta, lse, id_cuts)
        assert count.dtype == torch.int64 and torch.equal(count.cpu(), rcount)
        torch.testing.assert_close(mass.cpu(), rmass, rtol=1e-5, atol=1e-6)
        assert (count.cpu()[3] == 0).all() and count.cpu()[0, 5] == 0 and (mass.cpu()[3] == 0).all()
    assert (rcount > 0).any()  # not vacuous


def test_gumbel_argmax_keep_set_with_id_cut(fused_backend):
    """With a cut inside the tie group at theta, ties past the cut never win; equal to the reference."""
    device = device_for(fused_backend)
    logits, p = _tied_inputs(device)
    cpu_logits, cpu_p = [x.cpu() for x in logits], _cpu(p)
    z = ref.logits(cpu_logits, *cpu_p, 1031)
    theta = z.amax(1)  # the top tie group only
    keys = row_keys(4, torch.device("cpu"), torch.Generator().manual_seed(3))
    first_tie = (z == theta[:, None]).int().argmax(1)
    for cut in (torch.tensor([0, 10, 300, 1030]), torch.tensor([1030, 517, 5, 64])):
        cut = torch.maximum(cut, first_tie)  # keep sets are never empty
        ids, zs = _k(fused_backend, "gumbel_argmax")(logits, *p, 1031, theta.to(device), keys.to(device),
                                                     cut.to(device))
        rids, rzs = ref.gumbel_argmax(cpu_logits, *cpu_p, 1031, theta, keys, cut)
        assert torch.equal(ids.cpu(), rids) and torch.equal(zs.cpu(), rzs)
        assert ((ids.cpu() <= cut) & (z.gather(1, ids.cpu()[:, None])[:, 0] == theta)).all()


def test_top_k_limit_is_one_contract():
    """The CUDA kernels' kMaxTopK is the Python MAX_TOP_K that the launchers check against."""
    import re
    from pathlib import Path

    from mtkernels.ops.collab_args import MAX_TOP_K

    header = (Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "collab.cuh").read_text()
    assert int(re.search(r"constexpr int kMaxTopK = (\d+);", header).group(1)) == MAX_TOP_K
