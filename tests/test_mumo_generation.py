"""MuMo end to end: head training, MuMoGenerator against loops without cache or trie, plain greedy
decoding, batching, sampling keys, more than one token per step once trained, and the command line."""

import pytest
import torch

pytest.importorskip("transformers")

from mtkernels.bench import mumo_generation as mg  # noqa: E402
from mtkernels.mumo import MonoVocab, MuMoGenerator, MuMoHead, train_head  # noqa: E402
from mtkernels.mumo.trie import build_tries  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A small base model trained on the synthetic corpus and a head trained beside it."""
    return mg.build(mg.QUICK)


def reference_generate(model, head, prompt, max_new_tokens, eos, k=10):
    """MuMo greedy decoding with no cache and no trie: every candidate verified by its own forward
    of the whole sequence, σ in float64 from the base head."""
    decoder, w = model.get_decoder(), model.get_output_embeddings().weight.double()
    v_multi = w.shape[0]
    seq, new = list(prompt), []
    while len(new) < max_new_tokens:
        with torch.no_grad():
            h = decoder(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
            z = torch.cat([h.double() @ w.t(), head.mono_logits(h).double()])
        ids = torch.topk(z, min(k, z.numel())).indices.tolist()
        cands = [([i] if i < v_multi else list(head.vocab.base_ids[i - v_multi]))[: max_new_tokens - len(new)]
                 for i in ids]
        scores = []
        for c in cands:
            with torch.no_grad():
                hs = decoder(input_ids=torch.tensor([seq + c])).last_hidden_state[0].double()
            lp = torch.log_softmax(hs[len(seq) - 1: len(seq) - 1 + len(c)] @ w.t(), -1)
            scores.append(float(lp[torch.arange(len(c)), torch.tensor(c)].mean()))
        best = cands[max(range(len(cands)), key=lambda i: (scores[i], -i))]
        seq += best
        new += best
        if eos in best:
            break
    return new


def new_tokens(out, prompt_len, pad):
    rows = []
    for row in out[:, prompt_len:].tolist():
        while row and row[-1] == pad:
            row.pop()
        rows.append(row)
    return rows


# --- training ---------------------------------------------------------------------------------------

def test_training_reduces_the_loss_and_leaves_the_base_model_alone(trained):
    model = trained.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = MuMoHead(model, trained.vocab)
    result = train_head(model, head, trained.tokenizer, mg.corpus(), steps=30, batch_size=4, lr=3e-3, progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.learning_rates[0] < result.learning_rates[3]  # warm-up
    assert result.learning_rates[-1] < 0.05 * 3e-3             # cosine decay to ~0


def test_training_rejects_bad_arguments(trained):
    head = MuMoHead(trained.model, trained.vocab)
    with pytest.raises(ValueError, match="steps"):
        train_head(trained.model, head, trained.tokenizer, ["x"], steps=0, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="texts"):
        train_head(trained.model, head, trained.tokenizer, [], steps=1, batch_size=1, progress=False)


# --- the trie -----------------------------------------------------------------------------------------

def test_trie_shares_prefixes_and_indexes_the_predicting_rows():
    trie = build_tries([[[5], [5, 6, 7], [5, 6, 8], [9, 1]]])
    assert trie.num_nodes.tolist() == [6]            # 5, 6, 7, 8, 9, 1
    assert trie.tokens[0].tolist() == [5, 6, 7, 8, 9, 1]
    assert trie.depth[0].tolist() == [0, 1, 2, 2, 0, 1]
    assert trie.lengths[0].tolist() == [1, 3, 3, 2]
    # token j of a candidate is predicted by row 0 (the previous hidden state) or 1 + node of token j-1
    assert trie.node_index[0, 2, :3].tolist() == [0, 1, 2]
    assert trie.node_index[0, 3, :2].tolist() == [0, 5]
    mask = trie.tree_mask[0]
    assert mask[3].tolist() == [True, True, False, True, False, False]  # 8 sees 5, 6 and itself
    assert mask[5].tolist() == [False, False, False, False, True, True]


# --- generation ---------------------------------------------------------------------------------------

def test_generator_equals_separate_forwards_without_cache_or_trie(trained):
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=10)
    eos = trained.tokenizer.eos_token_id
    for prompt_text in ["今日は", "毎朝電車", "東京は"]:
        prompt = trained.tokenizer.encode(prompt_text, add_special_tokens=False)
        out = gen.generate(torch.tensor([prompt]), max_new_tokens=20)
        got = new_tokens(out, len(prompt), eos)[0]
        want = reference_generate(trained.model, trained.head, prompt, 20, eos)
        assert got == want
    assert gen.last_stats.forwards >= 1


def test_trained_head_emits_more_than_one_token_per_step(trained):
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=10)
    ids, mask = mg.prompts(trained, 4)
    gen.generate(ids, mask, max_new_tokens=24)
    assert gen.last_stats.tokens_per_step > 1.5


def test_a_batch_equals_one_row_at_a_time(trained):
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=10)
    ids, mask = mg.prompts(trained, 5)
    eos = trained.tokenizer.eos_token_id
    batch = new_tokens(gen.generate(ids, mask, max_new_tokens=16), ids.shape[1], eos)
    for b in range(5):
        row = ids[b][mask[b].bool()].unsqueeze(0)
        single = new_tokens(gen.generate(row, max_new_tokens=16), row.shape[1], eos)[0]
        assert batch[b] == single


def test_empty_vocabulary_is_plain_greedy_decoding(trained):
    empty = MonoVocab([], [])
    head = MuMoHead(trained.model, empty)
    gen = MuMoGenerator(trained.model, head, trained.tokenizer, k=10)
    ids, mask = mg.prompts(trained, 3)
    out = gen.generate(ids, mask, max_new_tokens=12)
    plain = mg.plain_greedy(trained, ids, mask, 12)
    eos = trained.tokenizer.eos_token_id
    assert new_tokens(out, ids.shape[1], eos) == new_tokens(plain, ids.shape[1], eos)
    assert gen.last_stats.tokens_per_step == 1.0


def test_sampling_keys_follow_the_sentence_not_the_batch(trained):
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=10)
    ids, mask = mg.prompts(trained, 4)
    eos = trained.tokenizer.eos_token_id
    kw = dict(max_new_tokens=12, greedy=False, temperature=2.0, seed=7)
    batch = new_tokens(gen.generate(ids, mask, **kw), ids.shape[1], eos)
    again = new_tokens(gen.generate(ids, mask, **kw), ids.shape[1], eos)
    assert batch == again
    row = ids[2][mask[2].bool()].unsqueeze(0)
    alone = new_tokens(gen.generate(row, sentence_ids=torch.tensor([2]), **kw), row.shape[1], eos)[0]
    assert alone == batch[2]
    other = new_tokens(gen.generate(ids, mask, **{**kw, "seed": 8}), ids.shape[1], eos)
    assert other != batch


def test_max_new_tokens_is_exact_and_rows_end_at_eos(trained):
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=10)
    ids, mask = mg.prompts(trained, 3)
    eos = trained.tokenizer.eos_token_id
    out = gen.generate(ids, mask, max_new_tokens=5)
    assert out.shape[1] <= ids.shape[1] + 5
    for row in new_tokens(out, ids.shape[1], eos):
        assert len(row) == 5 or (row and row[-1] == eos)
    long = gen.generate(ids, mask, max_new_tokens=200)
    for row in long[:, ids.shape[1]:].tolist():
        if eos in row:  # after EOS only padding (the tokenizer pads with EOS)
            assert set(row[row.index(eos):]) == {eos}


def test_generator_rejects_bad_input(trained):
    with pytest.raises(ValueError, match="k"):
        MuMoGenerator(trained.model, trained.head, trained.tokenizer, k=0)
    gen = MuMoGenerator(trained.model, trained.head, trained.tokenizer)
    with pytest.raises(ValueError, match="input_ids"):
        gen.generate(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        gen.generate(torch.ones((2, 3), dtype=torch.int64), torch.ones((2, 4), dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(torch.ones((1, 3), dtype=torch.int64), greedy=False, temperature=0.0)


# --- benchmark module and command line ------------------------------------------------------------------

def test_bench_records(trained):
    records = mg.run(dataclasses_replace(mg.QUICK, batch_sizes=(2,), new_tokens=6), setup=trained)
    by = {(r["bench"], r["method"]): r for r in records}
    assert by[("mumo_trie", "trie_forward")]["speedup"] > 0
    assert by[("mumo_generation", "mumo_generator")]["tokens_per_step"] >= 1.0
    assert "MuMo generation" in mg.format_table(records)


def dataclasses_replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("mumo_cli")
    base = root / "base"
    trained.model.save_pretrained(base)
    trained.tokenizer.save_pretrained(base)
    (root / "words.txt").write_text("\n".join(mg.corpus_words() + ["hello"]) + "\n", encoding="utf-8")
    (root / "texts.txt").write_text("\n".join(mg.corpus()) + "\n", encoding="utf-8")
    (root / "prompts.txt").write_text("今日は\n東京は\n", encoding="utf-8")
    return root


def test_cli_vocab_train_generate(saved, capsys):
    from mtkernels.cli import main

    assert main(["mumo", "vocab", "--base-tokenizer", str(saved / "base"), "--words", str(saved / "words.txt"),
                 "--out", str(saved / "vocab.json")]) == 0
    vocab = MonoVocab.load(str(saved / "vocab.json"))
    assert "hello" not in vocab.words and "天気" in vocab.words
    assert main(["mumo", "train", "--base", str(saved / "base"), "--vocab", str(saved / "vocab.json"),
                 "--texts", str(saved / "texts.txt"), "--out", str(saved / "head"), "--steps", "40",
                 "--batch-size", "4", "--lr", "3e-3"]) == 0
    assert (saved / "head" / "mumo_head.json").exists()
    capsys.readouterr()
    assert main(["mumo", "generate", "--base", str(saved / "base"), "--head", str(saved / "head"),
                 "--input", str(saved / "prompts.txt"), "--output", str(saved / "out.txt"),
                 "--max-new-tokens", "8"]) == 0
    lines = (saved / "out.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert "tokens/step" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--base", "{root}/nope", "--head", "{root}/head", "--input", "{root}/prompts.txt"], "--base"),
    (["generate", "--base", "{root}/base", "--head", "{root}/nohead", "--input", "{root}/prompts.txt"], "--head"),
    (["train", "--base", "{root}/base", "--vocab", "{root}/missing.json", "--texts", "{root}/texts.txt",
      "--out", "{root}/h2"], "--vocab"),
    (["vocab", "--base-tokenizer", "{root}/base", "--words", "{root}/missing.txt", "--out", "{root}/v.json"],
     "--words"),
])
def test_cli_errors_are_one_line_and_exit_2(saved, capsys, argv, message):
    from mtkernels.cli import main

    argv = [a.format(root=saved) for a in argv]
    assert main(["mumo", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
