"""The KD Trainer under real DDP: two CPU processes on gloo training a PEFT LoRA student.

Each rank builds the same tiny random-initialised Llama student (same seed), wraps it with LoRA (attention
projections and lm_head) and takes two SGD steps on its own shard of the data. With the gradients all-reduced
the ranks' parameters stay identical; without, they drift apart.
"""

import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
peft = pytest.importorskip("peft")

from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments  # noqa: E402

from mtkernels.integrations.hf import SelfEvolutionKDTrainer  # noqa: E402

from .spawn import run_ranks  # noqa: E402

WORLD_SIZE = 2
TIMEOUT_S = 120  # both processes together; a run takes well under a minute
VOCAB, SEQ = 64, 12


def _model(vocab, hidden, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(config)


def _lora_student():
    """The same LoRA student on every rank: base weights and adapter initialisation both seeded."""
    base = _model(VOCAB, 32, seed=0)
    torch.manual_seed(1)
    # init_lora_weights=False: B starts random too, so every adapter matrix gets a gradient from the first step.
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"],
                             init_lora_weights=False)
    return peft.get_peft_model(base, config)


def _dataset(n):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]


def _lora_parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _worker(rank, store_path, out_dir):
    """One DDP rank: two SGD steps of KD training, then its LoRA parameters (before and after) to a file."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_WORLD_SIZE=str(WORLD_SIZE), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    # A file store instead of a TCP port: nothing to collide with other runs on this machine.
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                                         world_size=WORLD_SIZE)
    try:
        student, teacher = _lora_student(), _model(VOCAB, 48, seed=3)
        before = _lora_parameters(student)
        args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=4, max_steps=2, optim="sgd",
                                 learning_rate=0.5, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                                 save_strategy="no", disable_tqdm=True, ddp_backend="gloo", logging_steps=1)
        trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=args,
                                         train_dataset=_dataset(4 * 2 * WORLD_SIZE), kd_gamma=1.0)
        assert trainer.accelerator.num_processes == WORLD_SIZE
        trainer.train()
        torch.save({"before": before, "after": _lora_parameters(student)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_lora_ranks_stay_identical(tmp_path):
    """The student's forward goes through DDP (so gradients are all-reduced) although ``PeftModel.forward``
    takes no ``logits_to_keep``; the lm_head adapter is trained too."""
    rank0, rank1 = run_ranks(_worker, tmp_path, WORLD_SIZE, TIMEOUT_S, "the DDP ranks")
    assert rank0["after"].keys() == rank1["after"].keys()
    assert any("lm_head" in name for name in rank0["after"])
    for name, value in rank0["after"].items():
        torch.testing.assert_close(rank1["after"][name], value, rtol=0, atol=0, msg=name)
        assert not torch.equal(value, rank0["before"][name]), f"{name} was not updated"
