"""Hugging Face integrations of the self-evolution KD loss: Trainer, mixin and TRL drop-in.

Tiny random-initialised Llama models (student hidden 32, teacher hidden 64 with a larger vocabulary), saved
and reloaded with ``save_pretrained`` / ``from_pretrained``, on a synthetic translation-like task:
``src <sep> reversed(src) + 1``, labels only on the target side.
"""

import functools
import os
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

import mtkernels  # noqa: E402
from mtkernels.integrations.hf import (  # noqa: E402
    SelfEvolutionKDMixin, SelfEvolutionKDTrainer, final_hidden_states, trl_generalized_jsd_loss)

VOCAB_S, VOCAB_T = 300, 320  # the teacher's extra ids are outside the shared prefix
PAD, SEP, FIRST, TOKENS = 0, 1, 3, 40  # words are ids FIRST..TOKENS-1
MAX_SRC = 8
SEQ = 2 * MAX_SRC + 1

# The teacher's larger vocabulary is deliberate here; the warning about it is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:student vocabulary")


def _config(vocab, hidden):
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       pad_token_id=PAD, bos_token_id=None, eos_token_id=None)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Directories of the saved student and teacher."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dirs = {}
    for name, vocab, hidden in (("student", VOCAB_S, 32), ("teacher", VOCAB_T, 64)):
        dirs[name] = str(root / name)
        LlamaForCausalLM(_config(vocab, hidden)).save_pretrained(dirs[name])
    return dirs


def _load(path):
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)


def _dataset(n, seed=0):
    """``n`` examples ``{input_ids, attention_mask, labels}``, each ``(SEQ,)``, padded on the right."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(2, MAX_SRC + 1, (), generator=gen))
        src = torch.randint(FIRST, TOKENS, (length,), generator=gen)
        tgt = ((src - FIRST + 1) % (TOKENS - FIRST) + FIRST).flip(0)
        pad = torch.full((SEQ - 2 * length - 1,), PAD)
        ids = torch.cat([src, torch.tensor([SEP]), tgt, pad])
        labels = torch.cat([torch.full((length + 1,), -100), tgt, torch.full_like(pad, -100)])
        mask = torch.cat([torch.ones(2 * length + 1, dtype=torch.long), torch.zeros_like(pad)])
        examples.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return examples


def _batch(examples):
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def _args(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30, learning_rate=3e-3,
                  report_to=[], use_cpu=True, logging_steps=10, save_strategy="no", disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _hand_loss(student, teacher, batch, num_items=None, **kd):
    """The reference loss from full logits ``(B, T, V)`` computed here, shifted by one position."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    student_logits = student(**inputs).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits[:, :-1]
    return mtkernels.self_evolution_kd_loss_from_logits(student_logits, teacher_logits, batch["labels"][:, 1:],
                                                        num_items_in_batch=num_items, backend="reference", **kd)


def _logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_final_hidden_states_give_the_logits(model_dirs):
    model = _load(model_dirs["teacher"])
    batch = _batch(_dataset(3))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hidden, outputs = final_hidden_states(model, inputs)
    assert outputs.logits.shape == (3, 0, VOCAB_T)  # no logits were computed
    torch.testing.assert_close(hidden @ model.lm_head.weight.T, model(**inputs).logits)


def test_final_hidden_states_go_through_the_wrapper(model_dirs):
    """``PeftModel.forward(*args, **kwargs)`` lists no ``logits_to_keep``: it is still the module called (as DDP
    or a compiled module must be), with no logits computed."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_load(model_dirs["student"]), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module))
    batch = _batch(_dataset(3))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hidden, outputs = final_hidden_states(model, inputs)
    assert calls == [model]
    assert outputs.logits.shape == (3, 0, VOCAB_S)
    torch.testing.assert_close(hidden @ model.get_output_embeddings().weight.T, model(**inputs).logits)


class _LlamaWithoutLogitsToKeep(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, use_cache=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_final_hidden_states_without_logits_to_keep_still_call_the_wrapper(model_dirs):
    """A causal LM that takes no ``logits_to_keep``: the wrapper is still called (full logits, with a warning)."""
    peft = pytest.importorskip("peft")
    model = _LlamaWithoutLogitsToKeep.from_pretrained(model_dirs["student"], dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"]))
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module))
    batch = _batch(_dataset(3))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with pytest.warns(UserWarning, match="logits_to_keep"):
        hidden, outputs = final_hidden_states(model, inputs)
    assert calls == [model]
    torch.testing.assert_close(hidden @ model.get_output_embeddings().weight.T, outputs.logits)


def test_trainer_loss_decreases(model_dirs, tmp_path):
    """From random initialisation every token has d ≈ 2 > Γ = 0.4 (all hard: the bounded skew loss learns
    slowly), so Γ = 2.2 here, which starts with some hard tokens and sheds them as the student learns."""
    trainer = SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), teacher_model=_load(model_dirs["teacher"]),
                                     args=_args(tmp_path), train_dataset=_dataset(64), kd_gamma=2.2)
    trainer.train()
    losses, hard = _logged(trainer, "loss"), _logged(trainer, "kd_hard_fraction")
    difficulty = _logged(trainer, "kd_mean_difficulty")
    assert len(losses) == len(hard) == len(difficulty) == 3
    assert losses[2] < losses[1] < losses[0] and losses[2] < 0.95 * losses[0], losses
    assert difficulty[2] < difficulty[0] and 0.0 < hard[2] < hard[0] < 1.0, (difficulty, hard)
    assert not trainer.teacher_model.training
    assert all(not p.requires_grad for p in trainer.teacher_model.parameters())


@pytest.mark.parametrize("accumulation", [1, 4])
def test_logged_loss_matches_reference(model_dirs, tmp_path, accumulation):
    """One optimizer step over the whole dataset: the logged loss is the token mean over all its micro-batches
    (Γ = 2.2 mixes easy and hard tokens, so per-micro-batch means would average to something else)."""
    examples = _dataset(8 * accumulation, seed=accumulation)
    student, teacher = _load(model_dirs["student"]), _load(model_dirs["teacher"])
    with torch.no_grad():
        expected = _hand_loss(student, teacher, _batch(examples), gamma=2.2).item()
        micro_means = [_hand_loss(student, teacher, _batch(examples[i:i + 8]), gamma=2.2).item()
                       for i in range(0, len(examples), 8)]
    args = _args(tmp_path, max_steps=1, logging_steps=1, gradient_accumulation_steps=accumulation,
                 train_sampling_strategy="sequential")
    trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=examples,
                                     kd_gamma=2.2)
    trainer.train()
    assert _logged(trainer, "loss")[0] == pytest.approx(expected, rel=1e-5)
    if accumulation > 1:  # the check can tell num_items_in_batch scaling from averaging micro-batch means
        assert sum(micro_means) / accumulation != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("mode", ["self_evolution", "skew", "reverse_kd"])
def test_compute_loss_and_gradients_match_reference(model_dirs, tmp_path, mode):
    """``compute_loss`` with the Trainer's ``num_items_in_batch`` (here 2× this micro-batch's tokens)."""
    batch = _batch(_dataset(8, seed=7))
    num_items = 2 * int((batch["labels"][:, 1:] != -100).sum())
    kd = dict(mode=mode, lam=0.4, beta=0.6, gamma=0.3, temperature=1.5)
    student, teacher = _load(model_dirs["student"]), _load(model_dirs["teacher"])
    trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path),
                                     kd_mode=mode, kd_lambda=0.4, kd_beta=0.6, kd_gamma=0.3, kd_temperature=1.5)
    loss = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(num_items))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()
    expected = _hand_loss(student, teacher, batch, num_items, **kd)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, p in student.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def _lora_student(path, dropout=0.0):
    """The student with LoRA adapters on attention and on lm_head; B starts random (``init_lora_weights=False``)
    so that the adapters change the logits from the start."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(5)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,
                             target_modules=["q_proj", "v_proj", "lm_head"])
    return peft.get_peft_model(_load(path), config)


def test_lora_on_lm_head_matches_model_logits(model_dirs, tmp_path):
    """The loss applies the lm_head adapter (``W + scaling · B · A``), as the model's own logits do, and A and B
    get the reference gradients."""
    student, teacher = _lora_student(model_dirs["student"]), _load(model_dirs["teacher"])
    trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path), kd_gamma=2.2)
    batch = _batch(_dataset(8, seed=7))
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.requires_grad}
    student.zero_grad()
    expected = _hand_loss(student, teacher, batch, gamma=2.2)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    head_grads = [name for name in grads if "lm_head.lora_" in name]
    assert len(head_grads) == 2  # A and B
    for name, p in student.named_parameters():
        if p.requires_grad:
            assert grads[name].abs().sum() > 0, name
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lora_dropout_on_lm_head_is_rejected_in_training(model_dirs, tmp_path):
    """Dropout on the lm_head input cannot be folded into one weight: an error in training, nothing in eval."""
    student, teacher = _lora_student(model_dirs["student"], dropout=0.1), _load(model_dirs["teacher"])
    trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path))
    batch = _batch(_dataset(4, seed=8))
    with pytest.raises(ValueError, match="lora_dropout=0.1"):
        trainer.compute_loss(student.train(), batch)
    with torch.no_grad():
        loss = trainer.compute_loss(student.eval(), batch)
        expected = _hand_loss(student, teacher, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_torch_compile_runs_the_compiled_module(model_dirs, tmp_path):
    """``torch_compile=True``: the student's forward runs through the compiled module (dynamo frames are
    compiled; the ``eager`` backend keeps this fast)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    args = _args(tmp_path, max_steps=2, logging_steps=1, torch_compile=True, torch_compile_backend="eager")
    trainer = SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), teacher_model=_load(model_dirs["teacher"]),
                                     args=args, train_dataset=_dataset(16))
    trainer.train()
    assert counters["frames"]["ok"] > 0
    assert len(_logged(trainer, "loss")) == 2
    torch._dynamo.reset()


def test_evaluation_without_prediction_loss_only_warns_once(model_dirs, tmp_path):
    """With ``compute_metrics`` the Trainer asks for predictions, which are empty: a warning, once."""
    student, teacher = _load(model_dirs["student"]), _load(model_dirs["teacher"])
    predicted_positions = lambda prediction: {"positions": prediction.predictions.shape[1]}  # noqa: E731
    trainer = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, args=_args(tmp_path),
                                     eval_dataset=_dataset(16), compute_metrics=predicted_positions)
    with pytest.warns(UserWarning, match="prediction_loss_only=True") as caught:
        assert trainer.evaluate()["eval_positions"] == 0
        trainer.evaluate()
    assert sum("prediction_loss_only" in str(w.message) for w in caught) == 1
    quiet = SelfEvolutionKDTrainer(model=student, teacher_model=teacher, eval_dataset=_dataset(16),
                                   compute_metrics=predicted_positions,
                                   args=_args(tmp_path, prediction_loss_only=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*prediction_loss_only")
        assert "eval_loss" in quiet.evaluate()


def test_vocabulary_mismatch_warns(model_dirs, tmp_path):
    with pytest.warns(UserWarning, match=r"student vocabulary \(300\) and teacher vocabulary \(320\)"):
        SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), teacher_model=_load(model_dirs["teacher"]),
                               args=_args(tmp_path))


def test_label_smoothing_is_rejected(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), teacher_model=_load(model_dirs["teacher"]),
                               args=_args(tmp_path, label_smoothing_factor=0.1))


def test_loss_module_takes_liger_true_labels():
    """``SelfEvolutionKDLoss`` accepts Liger's ``true_labels=`` keyword as well as ``labels=``."""
    gen = torch.Generator().manual_seed(4)
    student_input, teacher_input = torch.randn(6, 8, generator=gen), torch.randn(6, 16, generator=gen)
    student_weight, teacher_weight = torch.randn(30, 8, generator=gen), torch.randn(30, 16, generator=gen)
    labels = torch.randint(0, 30, (6,), generator=gen)
    loss_fn = mtkernels.nn.SelfEvolutionKDLoss(mode="skew", backend="reference")
    positional = loss_fn(student_input, student_weight, teacher_input, teacher_weight, labels)
    for name in ("true_labels", "labels"):
        torch.testing.assert_close(loss_fn(student_input=student_input, student_weight=student_weight,
                                           teacher_input=teacher_input, teacher_weight=teacher_weight,
                                           **{name: labels}), positional)
    with pytest.raises(TypeError, match="true_labels"):
        loss_fn(student_input, student_weight, teacher_input, teacher_weight, labels, labels=labels)
    with pytest.raises(TypeError, match="true_labels"):
        loss_fn(student_input, student_weight, teacher_input, teacher_weight)


class _CountingTrainer(Trainer):
    """An existing Trainer subclass with behaviour of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_seen = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.steps_seen += 1
        return super().training_step(model, inputs, num_items_in_batch)


class _KDCountingTrainer(SelfEvolutionKDMixin, _CountingTrainer):
    pass


def test_mixin_on_trainer_subclass(model_dirs, tmp_path):
    student, teacher = _load(model_dirs["student"]), _load(model_dirs["teacher"])
    before = student.lm_head.weight.detach().clone()
    args = _args(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=2)
    trainer = _KDCountingTrainer(model=student, teacher_model=model_dirs["teacher"], args=args,
                                 train_dataset=_dataset(64), kd_mode="self_evolution_topk", kd_hard_fraction=0.5)
    trainer.train()
    assert trainer.steps_seen == 8  # 4 optimizer steps × 2 micro-batches
    assert not torch.equal(before, student.lm_head.weight)
    hard = _logged(trainer, "kd_hard_fraction")
    assert len(hard) == 2 and all(h == pytest.approx(0.5, abs=0.05) for h in hard)


def test_mixin_rejects_bad_options(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="teacher_model"):
        SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), args=_args(tmp_path))
    with pytest.raises(ValueError, match="mode"):
        SelfEvolutionKDTrainer(model=_load(model_dirs["student"]), teacher_model=_load(model_dirs["teacher"]),
                               args=_args(tmp_path), kd_mode="jsd")


# --- TRL ------------------------------------------------------------------------------------------

def _logits(seed=0, batch=2, length=5):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, VOCAB_S, generator=gen, requires_grad=True)
    teacher = torch.randn(batch, length, VOCAB_T, generator=gen)
    labels = torch.randint(0, VOCAB_S, (batch, length), generator=gen)
    labels[0, :2] = -100
    return student, teacher, labels


def test_trl_loss_reductions():
    student, teacher, labels = _logits()
    valid = int((labels != -100).sum())
    ref = functools.partial(mtkernels.self_evolution_kd_loss_from_logits, student, teacher, labels, mode="skew",
                            temperature=2.0, backend="reference")
    ours = functools.partial(trl_generalized_jsd_loss, student, teacher, labels, beta=0.9, temperature=2.0,
                             kd_mode="skew")
    rows = ref(reduction="none")
    torch.testing.assert_close(ours(reduction="none"), rows)
    torch.testing.assert_close(ours(), rows.sum() / valid)
    torch.testing.assert_close(ours(reduction="sum"), rows.sum())
    torch.testing.assert_close(ours(reduction="mean"), rows.sum() / (valid * VOCAB_S))
    torch.testing.assert_close(ours(reduction="sum", num_items_in_batch=20), rows.sum() / 20)
    with pytest.raises(ValueError, match="need `labels`"):
        trl_generalized_jsd_loss(student, teacher)


def test_trl_gkd_trainer_monkeypatch(model_dirs, monkeypatch):
    """TRL's own ``GKDTrainer.compute_loss`` (shift, teacher forward) runs with the patched loss."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd")
    patched = functools.partial(trl_generalized_jsd_loss, kd_mode="self_evolution", kd_lambda=0.3, kd_gamma=0.2)
    monkeypatch.setattr(gkd.GKDTrainer, "generalized_jsd_loss", staticmethod(patched))
    trainer = gkd.GKDTrainer.__new__(gkd.GKDTrainer)  # only the attributes compute_loss reads
    student, teacher = _load(model_dirs["student"]), _load(model_dirs["teacher"])
    trainer.teacher_model, trainer.beta = teacher, 0.5
    batch = _batch(_dataset(4, seed=3))
    loss = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(50))
    expected = _hand_loss(student, teacher, batch, 50, mode="self_evolution", lam=0.3, gamma=0.2)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.lm_head.weight.grad is not None
