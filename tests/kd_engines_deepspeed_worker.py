"""The ranks of tests/test_kd_engines_deepspeed.py: the students of tests/kd_engines_hf_worker.py trained under
DeepSpeed ZeRO-3 (CPU accelerator, gloo) by ``deepspeed.initialize`` and the KD trainer's ``compute_loss`` (the
teacher partitioned too), and by ``SelfEvolutionKDTrainer.train()`` with a ZeRO-3 config, against the same steps in one process on the whole batches."""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import kd_engines_hf_worker as hf
from .spawn import run_cases

WORLD_SIZE = hf.WORLD_SIZE
# Every parameter partitioned (no persistence threshold): lm_head is empty outside its module's forward.
ZERO3 = {"train_micro_batch_size_per_gpu": hf.PER_RANK, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
         "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                               "stage3_prefetch_bucket_size": 0},
         "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}


def case_zero3(kind, want, out_dir):
    import deepspeed

    model = hf.student(kind)
    trainer = hf._trainer(model, out_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ZERO3,
                                      optimizer=torch.optim.SGD(params, lr=hf.LR))
    # The teacher as an inference engine (as TRL prepares it): its forward gathers layer by layer.
    teacher, *_ = deepspeed.initialize(model=hf.teacher(), config={**ZERO3, "zero_allow_untested_optimizer": False})
    trainer.teacher_model = teacher.module.eval()
    head = model.get_output_embeddings()
    head = head.get_base_layer() if hasattr(head, "get_base_layer") else head
    assert head.weight.numel() == 0 and trainer.teacher_model.lm_head.weight.numel() == 0, "not partitioned"
    rank, data, losses = dist.get_rank(), hf.dataset(), []
    engine.train()
    for step in range(hf.STEPS):
        rows = data[step * WORLD_SIZE * hf.PER_RANK:(step + 1) * WORLD_SIZE * hf.PER_RANK]
        num_items = sum(int((r["labels"][1:] != -100).sum()) for r in rows)
        batch = hf._stack(rows[rank * hf.PER_RANK:(rank + 1) * hf.PER_RANK])
        loss = trainer.compute_loss(engine, batch, num_items_in_batch=torch.tensor(num_items))
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach())
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        trained = hf.trainable(model)
    hf._check(losses, trained, want, kind)


def case_trainer_zero3(kind, want, out_dir):
    """``Trainer.train()`` with a ZeRO-3 ``deepspeed`` config: accelerate builds the engine."""
    import deepspeed

    model = hf.student(kind)
    config = {**ZERO3, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "gradient_clipping": "auto"}
    trainer = hf._trainer(model, out_dir, deepspeed=config)
    trainer.train()
    assert isinstance(trainer.model_wrapped, deepspeed.DeepSpeedEngine), type(trainer.model_wrapped)
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        trained = hf.trainable(model)
    hf._check(trainer.losses, trained, want, kind)


CASES = {**{f"zero3_loop-{kind}": (case_zero3, kind) for kind in hf.STUDENTS},
         **{f"trainer_zero3-{kind}": (case_trainer_zero3, kind) for kind in ("whole", "lora_lm_head")}}


def worker(rank, store_path, out_dir):
    run_cases(rank, store_path, out_dir, WORLD_SIZE, lambda: hf.case_calls(CASES, out_dir),
              env={**hf.rank_env(rank), "DS_ACCELERATOR": "cpu"})
