"""``torch.compile(fullgraph=True)`` of every public op in a fresh process, as a user first meets it:
nothing may import a backend inside the traced call (the package resolves them at import)."""

import subprocess
import sys

SCRIPT = r"""
import torch, mtkernels

def collab(x, y):
    out = mtkernels.fused_collab_softmax([x, y], [1.0, -0.5], top_k=4, temperature=0.7)
    ids = mtkernels.fused_collab_sample([x, y], top_k=8, top_p=0.9, generator=None)
    full = mtkernels.fused_collab_sample([x, y], top_p=0.9, greedy=True)
    z = mtkernels.collab_logits([x, y], [1.0, 0.5])
    return out.probs, out.ids, ids, full, z

def kd(h, w, ht, wt, labels, s, t):
    a = mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode="skew")
    b = mtkernels.self_evolution_kd_loss_from_logits(s, t, labels, mode="reverse_kd")
    return a + b

g = torch.Generator().manual_seed(0)
x, y = torch.randn(3, 301, generator=g), torch.randn(3, 301, generator=g)
compiled = torch.compile(collab, fullgraph=True, backend="aot_eager")(x, y)  # before any eager call
eager = collab(x, y)
for a, b in zip(eager[:2] + eager[3:], compiled[:2] + compiled[3:]):  # eager[2]: an unseeded draw
    torch.testing.assert_close(a, b)

h, w = torch.randn(6, 8, generator=g).requires_grad_(), torch.randn(301, 8, generator=g).requires_grad_()
ht, wt = torch.randn(6, 8, generator=g), torch.randn(301, 8, generator=g)
s, t, labels = torch.randn(6, 301, generator=g).requires_grad_(), torch.randn(6, 301, generator=g), torch.arange(6)
loss = torch.compile(kd, fullgraph=True, backend="aot_eager")(h, w, ht, wt, labels, s, t)
loss.backward()
want = kd(h.detach().requires_grad_(), w.detach(), ht, wt, labels, s.detach(), t)
torch.testing.assert_close(loss, want)
assert h.grad is not None and w.grad is not None and s.grad is not None

def mumo(logits, ids, lengths, hidden, weight, nodes, node_index, h, wm, f, wo, targets):
    a = mtkernels.mumo_verify_scores(logits, ids, lengths)
    b = mtkernels.mumo_verify_scores_fused(hidden, weight, ids, lengths)
    c = mtkernels.mumo_verify_scores_fused(nodes, weight, ids, lengths, node_index=node_index)
    probs, top, lse = mtkernels.mumo_head_topk(h, wm, f, wo, k=5, temperature=0.7)
    return a, b, c, probs, top, lse, mtkernels.mumo_head_cross_entropy(h, wm, f, wo, targets)

B, K, L, V, H = 2, 3, 4, 301, 8
args = (torch.randn(B, K, L, V, generator=g), torch.randint(0, V, (B, K, L), generator=g),
        torch.randint(1, L + 1, (B, K), generator=g), torch.randn(B, K, L, H, generator=g),
        torch.randn(V, H, generator=g), torch.randn(B, 5, H, generator=g), torch.randint(0, 5, (B, K, L), generator=g),
        torch.randn(4, 8, generator=g), torch.randn(301, 8, generator=g),
        torch.randn(4, 6, generator=g).requires_grad_(), torch.randn(57, 6, generator=g).requires_grad_(),
        torch.tensor([0, 300, 301, 357 - 1]))
out = torch.compile(mumo, fullgraph=True, backend="aot_eager")(*args)
out[-1].backward()
f, wo = args[9], args[10]
want = mumo(*args[:9], f.detach(), wo.detach(), args[11])
for a, b in zip(out, want):
    torch.testing.assert_close(a, b)
assert f.grad is not None and wo.grad is not None
print("compiled ok")
"""


def test_torch_compile_fullgraph_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "compiled ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
