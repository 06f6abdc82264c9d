"""MuMo verification scores: every backend against the reference and an independent float64
formula, the fused form against the logits form, the trie form against the padded form, argument
errors, inputs left unmodified, torch.compile."""

import math

import pytest
import torch

import mtkernels
from mtkernels import backends
from mtkernels.reference import kernels as ref

from .conftest import FUSED_BACKENDS, device_for

ALL_BACKENDS = ["reference"] + [b for b in FUSED_BACKENDS if backends.has_kernel(b, "mumo_verify", "lse_pick")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _problem(b, k, length, vocab, dtype=torch.float32, scale=3.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, length, vocab, generator=g) * scale).to(dtype)
    ids = torch.randint(0, vocab, (b, k, length), generator=g)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    if b:  # a full-length and a length-1 candidate in every problem
        lengths[0, 0] = length
        lengths[-1, -1] = 1
    return logits.to(device), ids.to(device), lengths.to(device)


def float64_scores(logits, ids, lengths):
    """σ by an independent formula: a float64 log-sum-exp per position, a Python mean per candidate."""
    x = logits.double().cpu()
    lse = torch.logsumexp(x, dim=-1)
    out = torch.empty(lengths.shape, dtype=torch.float64)
    for b in range(lengths.shape[0]):
        for c in range(lengths.shape[1]):
            n = int(lengths[b, c])
            out[b, c] = sum(float(x[b, c, j, ids[b, c, j]] - lse[b, c, j]) for j in range(n)) / n
    return out.float()


def _tol(dtype, scale=1.0):
    return dict(rtol=1e-5, atol=2e-5 * scale)


def _backend_device(backend):
    return device_for(backend) if backend != "reference" else torch.device("cpu")


def _small(backend):
    return backend == "triton" and device_for("triton").type == "cpu"  # the interpreter is slow


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scores_match_reference_and_float64(backend, dtype):
    device = _backend_device(backend)
    for vocab, (b, k, length) in [(1003, (2, 10, 8)), (1003, (1, 3, 16))]:
        logits, ids, lengths = _problem(b, k, length, vocab, dtype, device=device)
        got = mtkernels.mumo_verify_scores(logits, ids, lengths, backend=backend)
        assert got.dtype == torch.float32 and got.shape == (b, k)
        torch.testing.assert_close(got.cpu(), float64_scores(logits, ids, lengths.cpu()), **_tol(dtype))
        torch.testing.assert_close(got, ref.mumo_verify.verify_scores(logits, ids, lengths), **_tol(dtype))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_scores_large_vocabularies(backend, vocab):
    if _small(backend) and vocab > 32000:
        pytest.skip("the interpreter covers V = 32000")
    device = _backend_device(backend)
    logits, ids, lengths = _problem(1, 10 if vocab == 32000 and not _small(backend) else 2, 4, vocab, device=device)
    got = mtkernels.mumo_verify_scores(logits, ids, lengths, backend=backend)
    torch.testing.assert_close(got.cpu(), float64_scores(logits, ids, lengths.cpu()), **_tol(torch.float32))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_large_magnitudes_masked_logits_and_ties(backend):
    device = _backend_device(backend)
    logits, ids, lengths = _problem(2, 10, 4, 1003, scale=1e4, device="cpu")
    logits[0, 1, 0, ::3] = -math.inf  # masked tokens, the picked one kept finite
    ids[0, 1, 0] = 1
    logits[0, 2] = 7.0  # ties: every token alike, log p = -log V
    logits[1, 3, :, 5:] = -math.inf  # one finite-only prefix
    ids[1, 3] = torch.tensor([0, 1, 2, 3])
    logits[1, 4, 0, ids[1, 4, 0]] = -math.inf  # a picked token masked: σ = -inf
    lengths[1, 4] = 2
    logits, ids, lengths = logits.to(device), ids.to(device), lengths.to(device)
    got = mtkernels.mumo_verify_scores(logits, ids, lengths, backend=backend).cpu()
    want = float64_scores(logits, ids, lengths.cpu())
    assert got[1, 4] == -math.inf
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=2e-2)  # logits of 1e4: fp32 ulp 1e-3
    torch.testing.assert_close(got[0, 2], torch.tensor(-math.log(1003.0)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_padding_is_never_read(backend):
    device = _backend_device(backend)
    logits, ids, lengths = _problem(2, 10, 8, 1003, device="cpu")
    lengths[:] = 3
    poisoned = logits.clone()
    poisoned[:, :, 3:] = float("nan")
    a = mtkernels.mumo_verify_scores(logits.to(device), ids.to(device), lengths.to(device), backend=backend)
    b = mtkernels.mumo_verify_scores(poisoned.to(device), ids.to(device), lengths.to(device), backend=backend)
    torch.testing.assert_close(a, b)


def _fused_problem(b, k, length, h, vocab, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, k, length, h, generator=g)
    weight = (torch.randn(vocab, h, generator=g) / h**0.5 * 2).to(dtype)
    bias_t = torch.randn(vocab, generator=g).to(dtype) if bias else None
    ids = torch.randint(0, vocab, (b, k, length), generator=g)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    lengths[0, 0] = length
    return hidden, weight, bias_t, ids, lengths


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_matches_logits_form(backend, dtype):
    device = _backend_device(backend)
    shapes = [(2, 10, 4, 24, 1003)] if _small(backend) else [(2, 10, 8, 64, 1003), (1, 10, 4, 32, 32000)]
    for b, k, length, h, vocab in shapes:
        hidden, weight, bias, ids, lengths = (t.to(device) if t is not None else None
                                              for t in _fused_problem(b, k, length, h, vocab, dtype))
        got = mtkernels.mumo_verify_scores_fused(hidden, weight, ids, lengths, bias=bias, backend=backend)
        logits = ref.mumo_verify.head_logits(hidden, weight, bias)
        want = mtkernels.mumo_verify_scores(logits, ids, lengths, backend="reference")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_trie_form_matches_padded_form(backend):
    device = _backend_device(backend)
    b, k, length, h, vocab, nodes = 2, 10, 5, 24, 1003, 13
    g = torch.Generator().manual_seed(3)
    trie_hidden = torch.randn(b, nodes, h, generator=g)
    node_index = torch.randint(0, nodes - 1, (b, k, length), generator=g)  # node nodes-1: never referenced
    node_index[:, :, 0] = 0  # every candidate starts at the root
    weight = torch.randn(vocab, h, generator=g) / h**0.5
    bias = torch.randn(vocab, generator=g)
    ids = torch.randint(0, vocab, (b, k, length), generator=g)
    lengths = torch.randint(1, length + 1, (b, k), generator=g)
    padded = trie_hidden[torch.arange(b).view(b, 1, 1), node_index]  # (B, K, L, H)
    args = [t.to(device) for t in (trie_hidden, weight, ids, lengths, node_index, padded, bias)]
    trie_hidden, weight, ids, lengths, node_index, padded, bias = args
    got = mtkernels.mumo_verify_scores_fused(trie_hidden, weight, ids, lengths, bias=bias, node_index=node_index,
                                             backend=backend)
    want = mtkernels.mumo_verify_scores_fused(padded, weight, ids, lengths, bias=bias, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # every node referenced: the GEMM reads hidden in place
    full = torch.arange(nodes, device=device).repeat(k * length)[: k * length].view(1, k, length).expand(b, -1, -1)
    got = mtkernels.mumo_verify_scores_fused(trie_hidden, weight, ids, torch.full_like(lengths, length),
                                             node_index=full.contiguous(), backend=backend)
    want = mtkernels.mumo_verify_scores_fused(trie_hidden[torch.arange(b, device=device).view(b, 1, 1), full],
                                              weight, ids, torch.full_like(lengths, length), backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_primitives_match_their_definitions(backend):
    if backend == "reference":
        pytest.skip("the definitions themselves")
    device = _backend_device(backend)
    g = torch.Generator().manual_seed(5)
    for dtype in DTYPES:
        x = (torch.randn(7, 1003, generator=g) * 4).to(dtype)
        x[2] = -math.inf
        x[3, 100:] = -math.inf
        rows, ids = torch.tensor([6, 0, 3, 3, 2]), torch.tensor([1, 1002, 5, 99, 0])
        for r, i in [(rows, ids), (None, None)]:
            got = backends.kernel("mumo_verify", "lse_pick", backend)(x.to(device), r if r is None else r.to(device),
                                                               i if i is None else i.to(device))
            want = ref.mumo_lse_pick(x, r, i)
            torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(got[1].cpu(), want[1])
    h, w, bias = torch.randn(9, 40, generator=g), torch.randn(1003, 40, generator=g), torch.randn(1003, generator=g)
    for dtype in DTYPES:
        got = backends.kernel("mumo_verify", "linear_lse", backend)(h.to(device), w.to(dtype).to(device),
                                                             bias.to(dtype).to(device))
        torch.testing.assert_close(got.cpu(), ref.mumo_linear_lse(h, w.to(dtype), bias.to(dtype)), rtol=1e-5,
                                   atol=1e-5)


def test_cpu_tiles_cover_ragged_vocabularies():
    if "cpu" not in ALL_BACKENDS:
        pytest.skip("no cpu backend")
    from mtkernels.ops.mumo_verify_tiles import tiled_linear_lse

    g = torch.Generator().manual_seed(2)
    h, w, bias = torch.randn(5, 16, generator=g), torch.randn(1003, 16, generator=g), torch.randn(1003, generator=g)
    lse_pick = backends.kernel("mumo_verify", "lse_pick", "cpu")
    for tile_bytes in (1, 5 * 4 * 300, 1 << 30):  # the minimum tile, ragged tiles, one tile
        torch.testing.assert_close(tiled_linear_lse(h, w, bias, lse_pick, tile_bytes), ref.mumo_linear_lse(h, w, bias))


# --- arguments ------------------------------------------------------------------------------------

def _valid():
    return _problem(2, 3, 4, 50)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda x, i, n: (x.long(), i, n), TypeError, "logits.*dtype"),
    (lambda x, i, n: (x[0], i, n), ValueError, r"logits.*\(B, K, L, V\)"),
    (lambda x, i, n: (x, i.float(), n), TypeError, "candidate_ids.*integer"),
    (lambda x, i, n: (x, i[:, :, :3], n), ValueError, "candidate_ids.*shape"),
    (lambda x, i, n: (x, i, n[:1]), ValueError, "lengths.*shape"),
    (lambda x, i, n: (x, i, n * 0), ValueError, r"lengths.*\[1, 4\]"),
    (lambda x, i, n: (x, i, n + 4), ValueError, r"lengths.*\[1, 4\]"),
    (lambda x, i, n: (x, i + 50, n), ValueError, r"candidate_ids.*\[0, 49\]"),
    (lambda x, i, n: (x, i - 100, n), ValueError, "candidate_ids"),
    (lambda x, i, n: (x, i.to("meta"), n), ValueError, "candidate_ids.*on meta"),
    (lambda x, i, n: ([x], i, n), TypeError, "logits: expected a tensor"),
])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_arguments_raise_before_any_kernel(mutate, error, match, backend):
    x, i, n = _valid()
    with pytest.raises(error, match=match):
        mtkernels.mumo_verify_scores(*mutate(x, i, n), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_fused_arguments(backend):
    hidden, weight, bias, ids, lengths = _fused_problem(2, 3, 4, 8, 50, torch.float32)
    call = mtkernels.mumo_verify_scores_fused
    with pytest.raises(ValueError, match="weight.*match hidden"):
        call(hidden, weight[:, :7], ids, lengths, backend=backend)
    with pytest.raises(ValueError, match="bias.*shape"):
        call(hidden, weight, ids, lengths, bias=bias[:3], backend=backend)
    with pytest.raises(TypeError, match="weight.*dtype"):
        call(hidden, weight.int(), ids, lengths, backend=backend)
    with pytest.raises(ValueError, match="candidate_ids.*\\[0, 49\\]"):
        call(hidden, weight, ids + 50, lengths, backend=backend)
    with pytest.raises(ValueError, match="lengths"):
        call(hidden, weight, ids, lengths + 4, backend=backend)
    with pytest.raises(ValueError, match="weight.*on meta"):
        call(hidden, weight.to("meta"), ids, lengths, backend=backend)
    trie = torch.randn(2, 6, 8)
    node_index = torch.zeros(2, 3, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"node_index.*\[0, 5\]"):
        call(trie, weight, ids, lengths, node_index=node_index + 6, backend=backend)
    with pytest.raises(ValueError, match="candidate_ids.*shape"):  # K, L come from node_index
        call(trie, weight, ids, lengths, node_index=node_index[:, :2], backend=backend)
    with pytest.raises(ValueError, match=r"hidden.*\(B, nodes, H\)"):
        call(hidden, weight, ids, lengths, node_index=node_index, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_inputs_are_not_modified(backend):
    device = _backend_device(backend)
    hidden, weight, bias, ids, lengths = (t.to(device) for t in _fused_problem(2, 3, 4, 8, 50, torch.bfloat16))
    logits = ref.mumo_verify.head_logits(hidden, weight, bias)
    before = [t.clone() for t in (hidden, weight, bias, ids, lengths, logits)]
    mtkernels.mumo_verify_scores(logits, ids, lengths, backend=backend)
    mtkernels.mumo_verify_scores_fused(hidden, weight, ids, lengths, bias=bias, backend=backend)
    for a, b in zip(before, (hidden, weight, bias, ids, lengths, logits)):
        assert torch.equal(a, b)


def test_empty_batch_and_int32_indices():
    logits, ids, lengths = _problem(0, 3, 4, 50)
    assert mtkernels.mumo_verify_scores(logits, ids, lengths).shape == (0, 3)
    logits, ids, lengths = _problem(2, 3, 4, 50)
    torch.testing.assert_close(mtkernels.mumo_verify_scores(logits, ids.int(), lengths.int()),
                               mtkernels.mumo_verify_scores(logits, ids, lengths))


def test_torch_compile_fullgraph():
    logits, ids, lengths = _problem(2, 3, 4, 301)
    hidden, weight, bias, fids, flengths = _fused_problem(2, 3, 4, 8, 301, torch.float32)

    def fn(logits, ids, lengths, hidden, weight, bias):
        return (mtkernels.mumo_verify_scores(logits, ids, lengths)
                + mtkernels.mumo_verify_scores_fused(hidden, weight, ids, lengths, bias=bias))

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, ids, lengths, hidden, weight, bias),
                               fn(logits, ids, lengths, hidden, weight, bias))
