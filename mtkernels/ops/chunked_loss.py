"""The chunked linear-loss driver shared by the fused losses (the KD loss, the MuMo head loss).

A loss over ``(N, V)`` logits that are a GEMM of hidden states never needs the whole ``(N, V)``
tensor: for a chunk of rows the driver forms the student's (and, optionally, a teacher's) float32
logits, hands them to the loss's *row kernel*, which writes its per-row results and overwrites the
student chunk with ``d(scaled loss) / d logits``, and folds that gradient into the inputs' and
weights' gradients with two more GEMMs. Gradients are therefore complete when the forward pass
ends, and backward only scales them (in place: :func:`scaled_in_place`).

Logits sources (``rows`` is a slice of the N rows):

- :class:`GivenLogits` ``(N, V)``: logits the caller already holds;
- :class:`LinearLogits`: a column concatenation of :class:`LinearBlock` s, block b giving columns
  ``x_b @ W_bᵀ + bias_b``, e.g. ``[h·W_multiᵀ ; f·W_monoᵀ]``; each block says whether it needs a
  gradient (a frozen base head does not).

The chunk plan (:func:`chunk_plan`) is a function of global sizes only, so that callers holding a
slice of the vocabulary each get the same chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence

import torch

Tensor = torch.Tensor
# Bytes of one chunk's float32 logits (student + teacher). CPU: the working set above the inputs
# and the returned gradients stays under 64 MiB. CUDA: memory is plentiful and few-row chunks
# would leave the GEMMs launch-bound, so a chunk there holds about a thousand rows at V = 128k.
CHUNK_BYTES = {"cpu": 60 * 2**20, "cuda": 1024 * 2**20}
CPU_VOCAB_BLOCK = 1024


def chunk_plan(n_rows: int, columns: int, device_type: str, chunk_size: Optional[int] = None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many rows of ``columns`` float32 logits
    (student plus teacher, global vocabulary sizes) as the device's budget holds; at least 1."""
    if chunk_size is not None:
        return max(1, min(int(chunk_size), n_rows))
    budget = CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"])
    return max(1, min(n_rows, budget // (4 * max(1, columns))))


def row_chunks(n_rows: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n_rows, chunk):
        yield slice(start, min(n_rows, start + chunk))


@dataclasses.dataclass
class BlockGrads:
    """Gradients of one linear block: ``x`` in its dtype, ``weight`` and ``bias`` accumulated in float32."""

    x: Tensor
    weight: Tensor
    bias: Optional[Tensor]


@dataclasses.dataclass
class LinearBlock:
    """Columns ``x @ weight.T + bias``: ``x (N, H)``, ``weight (V, H)``, ``bias (V,)`` or None.

    The GEMMs run in the weight's dtype, as autocast runs a linear layer whose weight is already in
    its compute dtype: each chunk of ``x`` (and the bias, once) is cast to it, never the weight."""

    x: Tensor
    weight: Tensor
    bias: Optional[Tensor] = None
    needs_grad: bool = True

    def __post_init__(self):  # gradients are formed by hand; out= GEMMs refuse inputs that require grad
        self.x, self.weight = self.x.detach(), self.weight.detach()
        self.bias = None if self.bias is None else self.bias.detach().to(self.weight.dtype)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def write_logits(self, rows: slice, out: Tensor) -> None:
        """``out (rows, V)`` float32 (possibly a column slice of a wider chunk) = this block's logits."""
        x = self.x[rows].to(self.weight.dtype)
        if x.device.type != "cpu":
            if self.weight.dtype == torch.float32 and out.is_contiguous():  # straight into the chunk
                torch.mm(x, self.weight.T, out=out) if self.bias is None else torch.addmm(
                    self.bias, x, self.weight.T, out=out)
            else:
                out.copy_(x @ self.weight.T if self.bias is None else torch.addmm(self.bias, x, self.weight.T))
            return
        # On CPU a chunk has few rows; BLAS runs that skinny GEMM ~1.3x faster as column blocks of
        # CPU_VOCAB_BLOCK written straight into the float32 chunk (which also skips a bf16 chunk copy).
        in_place = self.weight.dtype == torch.float32 and out.is_contiguous()
        for v in range(0, self.vocab, CPU_VOCAB_BLOCK):
            cols = slice(v, v + CPU_VOCAB_BLOCK)
            target = out[:, cols] if in_place else None
            w = self.weight[cols].T
            block = torch.mm(x, w, out=target) if self.bias is None else torch.addmm(self.bias[cols], x, w,
                                                                                      out=target)
            if not in_place:
                out[:, cols] = block

    def new_grads(self) -> BlockGrads:
        fp32 = dict(dtype=torch.float32, device=self.x.device)
        grad_x = torch.empty(self.x.shape, dtype=self.x.dtype, device=self.x.device)
        # the first chunk overwrites grad_weight (see accumulate): only an empty batch needs zeros
        grad_weight = (torch.empty if self.x.shape[0] > 0 else torch.zeros)(self.weight.shape, **fp32)
        grad_bias = None if self.bias is None else torch.zeros(self.bias.shape, **fp32)
        return BlockGrads(grad_x, grad_weight, grad_bias)

    def accumulate(self, grads: BlockGrads, rows: slice, grad_logits: Tensor) -> None:
        """Fold ``grad_logits (rows, V)`` (float32) into ``grads``."""
        g = grad_logits.to(self.weight.dtype)
        if grads.x.dtype == self.weight.dtype:
            torch.mm(g, self.weight, out=grads.x[rows])  # no temporary
        else:
            grads.x[rows] = g @ self.weight
        # fp32 accumulation across chunks; beta = 0 on the first ignores the uninitialised values (NaN too)
        grads.weight.addmm_(grad_logits.T, self.x[rows].float(), beta=0 if rows.start == 0 else 1)
        if grads.bias is not None:
            grads.bias.add_(grad_logits.sum(0))


@dataclasses.dataclass
class LinearLogits:
    """The column concatenation of ``blocks`` (all with the same N rows)."""

    blocks: Sequence[LinearBlock]

    @property
    def vocab(self) -> int:
        return sum(b.vocab for b in self.blocks)

    def _offsets(self):
        start = 0
        for block in self.blocks:
            yield block, slice(start, start + block.vocab)
            start += block.vocab

    def logits(self, rows: slice) -> Tensor:
        """``(rows, V)`` float32, a fresh tensor (row kernels overwrite it with the gradient)."""
        x = self.blocks[0].x
        n = len(range(*rows.indices(x.shape[0])))
        out = torch.empty(n, self.vocab, dtype=torch.float32, device=x.device)
        for block, cols in self._offsets():
            block.write_logits(rows, out[:, cols] if len(self.blocks) > 1 else out)
        return out

    def new_grads(self) -> List[Optional[BlockGrads]]:
        return [block.new_grads() if block.needs_grad else None for block in self.blocks]

    def accumulate(self, grads: List[Optional[BlockGrads]], rows: slice, grad_logits: Tensor) -> None:
        for (block, cols), g in zip(self._offsets(), grads):
            if g is not None:
                block.accumulate(g, rows, grad_logits[:, cols])


@dataclasses.dataclass
class GivenLogits:
    """Logits ``(N, V)`` the caller holds; the gradient is ``[grad_logits (N, V) in their dtype]``."""

    values: Tensor

    @property
    def vocab(self) -> int:
        return self.values.shape[1]

    def logits(self, rows: slice) -> Tensor:
        # a fresh float32 copy: the row kernel overwrites it with the gradient
        return self.values[rows].to(torch.float32, copy=True).contiguous()

    def new_grads(self) -> List[Tensor]:
        return [torch.empty_like(self.values)]

    def accumulate(self, grads: List[Tensor], rows: slice, grad_logits: Tensor) -> None:
        grads[0][rows] = grad_logits


# row_kernel(rows, student_logits (r, V_s) fp32, teacher_logits (r, V_t) fp32 or None): writes its
# per-row results for `rows` and, when gradients are wanted, overwrites student_logits with the gradient.
RowKernel = Callable[[slice, Tensor, Optional[Tensor]], None]


def chunked_pass(student, teacher, n_rows: int, chunk: int, row_kernel: RowKernel, want_grad: bool):
    """One pass over the row chunks. ``student`` / ``teacher`` (teacher may be None) are logits
    sources; returns ``student.new_grads()`` filled in (``None`` without ``want_grad``)."""
    grads = student.new_grads() if want_grad else None
    for rows in row_chunks(n_rows, chunk):
        s = student.logits(rows)
        t = None if teacher is None else teacher.logits(rows)
        row_kernel(rows, s, t)
        if want_grad:  # s now holds d(scaled loss)/d(student logits)
            student.accumulate(grads, rows, s)
        del s, t  # before the next chunk is allocated: one chunk of logits at a time
    return grads


# --- autograd helpers of losses whose gradients the forward pass computes --------------------------

def loss_only_differentiable(ctx, *other_outputs) -> None:
    """Without this, autograd hands backward zero-filled gradients for the other outputs, and some
    of them are weight- or logits-sized."""
    ctx.mark_non_differentiable(*other_outputs)
    ctx.set_materialize_grads(False)


def refuse_second_backward(ctx, what: str) -> None:
    """Backward scales the forward's gradients in place (eager mode), so it can run once; a second
    one is refused with an error that says why, before autograd's saved-tensor version check would
    fail with a generic one. Call it before reading ``ctx.saved_tensors``."""
    if torch.compiler.is_compiling():
        return
    if getattr(ctx, "backward_done", False):
        raise RuntimeError(f"a second backward through the same {what} is not supported (retain_graph=True): its "
                           f"gradients are computed in the forward pass and the first backward scales them in "
                           f"place; compute the loss again for another backward")
    ctx.backward_done = True


def scaled_in_place(grads, grad_loss: Tensor) -> tuple:
    """The forward's gradients times the incoming gradient, in place where autograd allows it: a
    second weight-sized copy would double the peak (see refuse_second_backward)."""
    if torch.compiler.is_compiling():
        return tuple(g * grad_loss for g in grads)
    return tuple(g.mul_(grad_loss) for g in grads)


def input_grads(num_inputs: int, *leading) -> tuple:
    """An autograd backward's return value: ``leading`` gradients, then None for the other inputs."""
    return tuple(leading) + (None,) * (num_inputs - len(leading))
