"""The ranks of tests/test_kd_engines_hf.py: a tiny Llama student (whole, or PEFT LoRA with and without an
adapter on lm_head) distilled from a tiny Llama teacher for a few SGD steps, each rank on its half of every
batch, by ``SelfEvolutionKDTrainer.train()`` under DDP and by the trainer's ``compute_loss`` in a plain loop
under FSDP2 (``fully_shard``), against the same steps in one process on the whole batches."""

from __future__ import annotations

import functools
import os

import peft
import torch
import torch.distributed as dist
from torch.utils.data import SequentialSampler
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from mtkernels import self_evolution_kd_loss
from mtkernels.integrations.hf import SelfEvolutionKDTrainer, final_hidden_states, output_head

from .spawn import run_cases

WORLD_SIZE = 2
VOCAB, SEQ, PER_RANK, STEPS, LR = 67, 10, 3, 3, 0.5  # a vocabulary no chunk or block size divides
KD = dict(kd_mode="self_evolution", kd_gamma=2.0, kd_chunk_size=7)  # Γ: some rows hard, some not
STUDENTS = ("whole", "lora", "lora_lm_head")


def _llama(hidden, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
                         bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked distributions: some rows hard, some not
    return model


def student(kind: str):
    """The same student on every rank: base weights and adapter initialisation both seeded."""
    model = _llama(32, seed=0)
    if kind == "whole":
        return model
    targets = ["q_proj", "v_proj"] + (["lm_head"] if kind == "lora_lm_head" else [])
    torch.manual_seed(1)
    # init_lora_weights=False: B starts random too, so every adapter matrix gets a gradient from the first step.
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    return peft.get_peft_model(model, config)


def teacher():
    return _llama(48, seed=3).eval().requires_grad_(False)


def dataset():
    """``STEPS`` global batches of ``WORLD_SIZE · PER_RANK`` rows, in order; more ignored labels in the first
    rank's rows than the second's, so the ranks' token counts differ."""
    g = torch.Generator().manual_seed(2)
    rows = []
    for i in range(STEPS * WORLD_SIZE * PER_RANK):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + 3 * ((i // PER_RANK) % 2 == 0)] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return rows


def _stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def trainable(model):
    """``{name: full tensor}`` of the parameters being trained (a DTensor is gathered)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            p = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = p.detach().clone()
    return out


def one_process(kind: str):
    """The reference: SGD on the whole batches, the loss written out (no trainer)."""
    model, teach, data = student(kind), teacher(), dataset()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR)
    losses = []
    batch_rows = WORLD_SIZE * PER_RANK
    for step in range(STEPS):
        batch = _stack(data[step * batch_rows:(step + 1) * batch_rows])
        labels = batch.pop("labels")
        hidden_s, _ = final_hidden_states(model, batch)
        with torch.no_grad():
            hidden_t, _ = final_hidden_states(teach, batch)
        (weight_s, _), (weight_t, _) = output_head(model), output_head(teach)
        loss = self_evolution_kd_loss(hidden_s[:, :-1].reshape(-1, 32), weight_s, hidden_t[:, :-1].reshape(-1, 48),
                                      weight_t, labels[:, 1:].reshape(-1), mode=KD["kd_mode"],
                                      gamma=KD["kd_gamma"], chunk_size=KD["kd_chunk_size"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses), trainable(model)


class RecordingKDTrainer(SelfEvolutionKDTrainer):
    """The KD trainer, reading its batches in order and recording each training step's loss."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.__dict__.setdefault("losses", []).append((loss[0] if return_outputs else loss).detach())
        return loss


def _trainer(model, out_dir, **kwargs):
    args = dict(output_dir=out_dir, per_device_train_batch_size=PER_RANK, max_steps=STEPS, optim="sgd",
                             learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, ddp_backend="gloo",
                             logging_steps=1, dataloader_num_workers=0)
    return RecordingKDTrainer(model=model, teacher_model=teacher(), args=TrainingArguments(**{**args, **kwargs}),
                              train_dataset=dataset(), **KD)


def _check(losses, params, want, kind, rtol=1e-5, atol=1e-6):
    """Each step's loss (the mean of the ranks', each scaled by the trainer to its share of the global mean
    times the ranks) and the final trained parameters equal the one-process run's."""
    losses = torch.stack(losses)
    dist.all_reduce(losses)
    want_losses, want_params = want
    torch.testing.assert_close(losses.cpu() / WORLD_SIZE, want_losses, rtol=rtol, atol=atol, msg="losses")
    assert params.keys() == want_params.keys()
    if kind == "lora_lm_head":
        assert any("lm_head.lora" in name for name in params), list(params)
    start = trainable(student(kind))
    for name, value in want_params.items():
        torch.testing.assert_close(params[name].cpu(), value, rtol=rtol, atol=atol, msg=name)
        assert not torch.equal(value, start[name]), f"{name} did not train"


def case_trainer_ddp(kind, want, out_dir):
    model = student(kind)
    trainer = _trainer(model, out_dir)
    assert trainer.accelerator.num_processes == WORLD_SIZE
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel)
    _check(trainer.losses, trainable(model), want, kind)


def case_fsdp2_loop(kind, want, out_dir):
    """The trainer's loss path on a ``fully_shard`` student (accelerate gives DDP on CPU): a plain loop calling
    ``compute_loss``, which runs the forward and the loss in a method registered on the FSDP root."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = student(kind)
    trainer = _trainer(model, out_dir)
    llama = model if kind == "whole" else model.base_model.model
    for layer in llama.model.layers:
        fully_shard(layer)
    # The root: embeddings, norm, lm_head (and its adapter), resharded after each forward as accelerate's
    # FSDP2 plugin does by default, so the weight is whole only inside a forward.
    fully_shard(model, reshard_after_forward=True)
    head = llama.lm_head.base_layer if kind == "lora_lm_head" else llama.lm_head
    assert isinstance(head.weight, DTensor), "lm_head.weight is not sharded"
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(isinstance(p, DTensor) for p in params)
    optimizer = torch.optim.SGD(params, lr=LR)
    rank, data, losses = dist.get_rank(), dataset(), []
    model.train()
    for step in range(STEPS):
        rows = data[step * WORLD_SIZE * PER_RANK:(step + 1) * WORLD_SIZE * PER_RANK]
        num_items = sum(int((r["labels"][1:] != -100).sum()) for r in rows)
        batch = _stack(rows[rank * PER_RANK:(rank + 1) * PER_RANK])
        optimizer.zero_grad()
        loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(num_items))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    _check(losses, trainable(model), want, kind)


CASES = {f"{engine}-{kind}": (fn, kind) for engine, fn in (("trainer_ddp", case_trainer_ddp),
                                                            ("fsdp2_loop", case_fsdp2_loop)) for kind in STUDENTS}


def rank_env(rank):
    """What torchrun would set, for the Trainer and accelerate."""
    return dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE=str(WORLD_SIZE))


def case_calls(cases, out_dir):
    """``{name: call}`` for ``cases`` ``{name: (fn, kind)}``, each against one process on the whole batches."""
    wants = {kind: one_process(kind) for kind in STUDENTS}
    return {name: functools.partial(fn, kind, wants[kind], os.path.join(out_dir, name))
            for name, (fn, kind) in cases.items()}


def worker(rank, store_path, out_dir):
    run_cases(rank, store_path, out_dir, WORLD_SIZE, lambda: case_calls(CASES, out_dir), env=rank_env(rank))


def case_trainer_fsdp2(kind, want, out_dir):
    """``Trainer.train()`` with accelerate's FSDP2 plugin (CUDA only: on CPU accelerate falls back to DDP)."""
    from torch.distributed.tensor import DTensor

    model = student(kind)
    fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                   "reshard_after_forward": True}
    trainer = _trainer(model, out_dir, use_cpu=False, ddp_backend="nccl", fsdp="full_shard", fsdp_config=fsdp_config)
    trainer.train()
    assert all(isinstance(p, DTensor) for p in model.parameters() if p.requires_grad), "not sharded by FSDP2"
    # the reference ran on the CPU: GPU GEMMs sum in another order
    _check(trainer.losses, trainable(model), want, kind, rtol=1e-4, atol=1e-5)


def gpu_worker(rank, store_path, out_dir):
    """One NCCL rank per GPU running :func:`case_trainer_fsdp2` for every student."""
    torch.cuda.set_device(rank)
    run_cases(rank, store_path, out_dir, WORLD_SIZE,
              lambda: case_calls({kind: (case_trainer_fsdp2, kind) for kind in STUDENTS}, out_dir),
              backend="nccl", env=rank_env(rank))
