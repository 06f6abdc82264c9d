"""mtkernels.generation.CollabGenerator on tiny random Llama models saved to and loaded from
directories: against naive loops that re-run every model on the whole sequence at every step
(no cache) and combine the logits in float64, against Hugging Face's generate for the large model
alone, and for batching, stopping, seeds, vocabularies and tokenizers."""

import contextlib
import copy

import pytest
import torch

import mtkernels

transformers = pytest.importorskip("transformers")

from mtkernels.generation import CollabGenerator  # noqa: E402
from mtkernels.generation.keys import sentence_key, step_keys  # noqa: E402
from mtkernels.generation.languages import language_name  # noqa: E402
from mtkernels.generation.prompts import left_pad, translation_messages  # noqa: E402

from .tiny_models import CORPUS, save_collab_models, train_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("large", "small_src", "small_tgt")
TEXTS = ["今日は晴れです。", "Das Wetter ist heute schön. Ich bin mit dem Zug gefahren.", "猫が好きです。",
         "The weather is nice today."]
EOS = 4  # <|eot_id|> of tiny_models' tokenizer




@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


def load(dirs):
    return [transformers.AutoModelForCausalLM.from_pretrained(dirs[n]).eval() for n in NAMES]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok):
    return save_collab_models(tmp_path_factory.mktemp("collab"), tokenizer=tok)


@pytest.fixture(scope="module")
def models(dirs):
    return load(dirs)


@pytest.fixture(scope="module")
def tokenizer(dirs):
    return transformers.AutoTokenizer.from_pretrained(dirs["large"])


def prompt_lists(tokenizer, texts=TEXTS, src="ja", tgt="en"):
    from mtkernels.generation.prompts import prompt_ids

    return [prompt_ids(tokenizer, translation_messages(t, src, tgt)) for t in texts]


def raw_lists(tokenizer, texts=TEXTS):
    """Plain-text prompts: random models' outputs depend mostly on a prompt's last tokens, which
    differ here (chat prompts all end with the assistant header)."""
    return [tokenizer(t)["input_ids"] for t in texts]


def batch_of(prompts, pad=EOS):
    return left_pad(prompts, pad)


# --- naive references -----------------------------------------------------------------------------

@torch.no_grad()
def combined_logprobs(models, weights, prompts, generated, vocab):
    """float64 log-softmax of Σ_m w_m·logits_m for the next token, every model re-run on its whole
    sequence (prompt + generated), no cache."""
    z = torch.zeros(vocab, dtype=torch.float64)
    for model, w, prompt in zip(models, weights, prompts):
        logits = model(torch.tensor([prompt + generated])).logits[0, -1, :vocab]
        z += w * logits.double()
    return torch.log_softmax(z, dim=0)


def naive_greedy(models, weights, prompts, max_new, eos=(EOS,), vocab=None, stop=None):
    """prompts: one id list per model. Argmax, lowest id on ties."""
    vocab = vocab or min(m.config.vocab_size for m in models)
    out = []
    for _ in range(max_new):
        token = int(torch.argmax(combined_logprobs(models, weights, prompts, out, vocab)))
        out.append(token)
        if token in eos or (stop is not None and stop(out)):
            break
    return out


def naive_beam(models, weights, prompts, num_beams, max_new, eos=(EOS,), length_penalty=1.0, early_stopping=False):
    """Hugging Face's beam search (transformers 5) written out over the full vocabulary, every
    beam re-run from scratch, float64 scores; ties: lowest (beam, token)."""
    vocab = min(m.config.vocab_size for m in models)
    keep = max(2, 1 + len(eos)) * num_beams
    running = [([], 0.0)]
    finished = []  # (score, seq), best first
    improvable = True
    for step in range(max_new):
        scores = torch.stack([score + combined_logprobs(models, weights, prompts, seq, vocab)
                              for seq, score in running]).flatten()
        order = torch.sort(scores, descending=True, stable=True).indices[:keep].tolist()
        cands = [(float(scores[i]), running[i // vocab][0] + [i % vocab]) for i in order]
        length = step + 1
        ended = [seq[-1] in eos or length == max_new for _, seq in cands]
        if improvable and not (early_stopping is True and len(finished) == num_beams):
            new = [(cands[r][0] / length ** length_penalty, cands[r][1]) for r in range(num_beams) if ended[r]]
            finished = sorted(finished + new, key=lambda h: -h[0])[:num_beams]
        penalised = [(s - 1e9 if e else s, seq) for (s, seq), e in zip(cands, ended)]
        running = [(seq, s) for s, seq in sorted(penalised, key=lambda c: -c[0])[:num_beams]]
        best_len = max_new if (early_stopping == "never" and length_penalty > 0) else length
        worst = min(s for s, _ in finished) if len(finished) == num_beams else -1e9
        improvable = improvable and running[0][1] / best_len ** length_penalty > worst
        if not improvable or (early_stopping is True and len(finished) == num_beams) or all(ended):
            break
    return finished[0][1]


def generated_rows(out, prompt_width, pad=EOS, eos=(EOS,)):
    """The new tokens of each row of generate's output, up to and including its end."""
    rows = []
    for row in out[:, prompt_width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:end])
    return rows


@contextlib.contextmanager
def extra_eos(models, *tokens):
    """Make ``tokens`` end-of-sequence ids of every model (random models rarely emit the real EOS)."""
    saved = [m.generation_config.eos_token_id for m in models]
    eos = [EOS] + sorted(set(tokens) - {EOS})
    for m in models:
        m.generation_config.eos_token_id = eos
    try:
        yield tuple(eos)
    finally:
        for m, value in zip(models, saved):
            m.generation_config.eos_token_id = value


@contextlib.contextmanager
def forward_batch_sizes(models):
    sizes = [[] for _ in models]
    def hook(sizes):
        return lambda mod, args, kwargs: sizes.append((kwargs.get("input_ids") if "input_ids" in kwargs else args[0])
                                                      .shape[0])

    handles = [m.register_forward_pre_hook(hook(s), with_kwargs=True) for m, s in zip(models, sizes)]
    try:
        yield sizes
    finally:
        for h in handles:
            h.remove()


# --- the model set -------------------------------------------------------------------------------

@torch.no_grad()
def test_model_set_cached_logits_equal_full_forward(models, tokenizer):
    """Left-padded prefill + cached steps, rows dropped and repeated: each row's logits equal a
    forward of its whole unpadded sequence."""
    from mtkernels.generation import ModelSet

    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    ms = ModelSet(models)
    seqs = [list(p) for p in prompts]

    def check(logits):
        for m, model in enumerate(models):
            assert logits[m].shape == (len(seqs), model.config.vocab_size)
            for b, seq in enumerate(seqs):
                full = model(torch.tensor([seq])).logits[0, -1]
                torch.testing.assert_close(logits[m][b], full, rtol=1e-4, atol=1e-4)

    logits = ms.prefill([ids] * 3, [mask] * 3)
    check(logits)
    g = torch.Generator().manual_seed(1)
    for step, rows in enumerate([None, [3, 1, 0], None, [2, 2, 0, 1], None]):
        if rows is not None:
            ms.keep(torch.tensor(rows))
            seqs = [list(seqs[r]) for r in rows]
        tokens = torch.randint(5, 400, (len(seqs),), generator=g)
        for seq, t in zip(seqs, tokens.tolist()):
            seq.append(t)
        logits = ms.step(tokens)
        check(logits)
    assert ms.batch_size == 4


# --- greedy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [0.6, 0.3, 0.5]])
def test_greedy_equals_naive_loop(models, tokenizer, weights):
    gen = CollabGenerator(models[0], models[1:], weights=weights, tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=12, greedy=True)
    assert out.dtype == torch.int64 and out.shape[0] == len(TEXTS)
    assert torch.equal(out[:, :ids.shape[1]], ids)
    for row, prompt in zip(generated_rows(out, ids.shape[1]), prompts):
        assert row == naive_greedy(models, weights, [prompt] * 3, 12)


def test_batch_equals_one_prompt_at_a_time(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], weights=[1.0, 0.5, 0.5], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding at work
    ids, mask = batch_of(prompts)
    batched = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=10), ids.shape[1])
    assert len({tuple(r) for r in batched}) == len(prompts)
    for prompt, row in zip(prompts, batched):
        one = gen.generate(torch.tensor([prompt]), max_new_tokens=10)
        assert generated_rows(one, len(prompt)) == [row]


def test_large_alone_matches_hugging_face_generate(models, tokenizer):
    gen = CollabGenerator(models[0], [], tokenizer=tokenizer)
    assert gen.num_models == 1
    ids, mask = batch_of(raw_lists(tokenizer))
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=8, greedy=True)
    want = models[0].generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=EOS)
    assert torch.equal(out, want)


def test_per_row_weights(models, tokenizer):
    rows = torch.tensor([[1.0, 1.0, -1.0], [1.0, 0.2, 0.9], [0.5, 1.0, 1.0], [1.0, 0.0, 0.0]])
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=8, weights=rows)
    for row, prompt, w in zip(generated_rows(out, ids.shape[1]), prompts, rows.tolist()):
        assert row == naive_greedy(models, w, [prompt] * 3, 8)
    with pytest.raises(ValueError, match="weights"):
        gen.generate(ids, attention_mask=mask, max_new_tokens=2, weights=rows[:2])
    with pytest.raises(ValueError, match="weights"):
        CollabGenerator(models[0], models[1:], weights=[1.0, 1.0], tokenizer=tokenizer)


def test_per_model_prompts_and_chat_templates(models, tokenizer):
    """Each model's prompt through its own chat template; naive loop with the same prompts."""
    other = copy.deepcopy(tokenizer)
    other.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
                           "{% endif %}{% endfor %}")
    gen = CollabGenerator(models[0], models[1:], tokenizer=[tokenizer, other, tokenizer])
    per_model = gen.prompts(TEXTS[:2], "ja", "en")
    assert per_model[0] == per_model[2] != per_model[1]
    assert tokenizer.decode(per_model[1][0]) == "<|begin_of_text|>Japanese:今日は晴れです。\nEnglish:"
    ids, masks = zip(*(batch_of(p) for p in per_model))
    out = gen.generate(list(ids), list(masks), max_new_tokens=8)
    for b, row in enumerate(generated_rows(out, ids[0].shape[1])):
        assert row == naive_greedy(models, [1.0] * 3, [p[b] for p in per_model], 8)


def test_different_vocab_sizes_use_the_shared_prefix(tmp_path, tok, models):
    dirs = save_collab_models(tmp_path, vocab_extra={"small_tgt": 7}, tokenizer=tok)
    padded = load(dirs)
    assert padded[2].config.vocab_size == padded[0].config.vocab_size + 7
    gen = CollabGenerator(padded[0], padded[1:])  # tokenizers from the directories
    prompts = raw_lists(gen.tokenizer, TEXTS[:2])
    ids, mask = batch_of(prompts)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=8)
    for row, prompt in zip(generated_rows(out, ids.shape[1]), prompts):
        assert row == naive_greedy(padded, [1.0] * 3, [prompt] * 3, 8, vocab=padded[0].config.vocab_size)
        assert max(row) < padded[0].config.vocab_size


# --- stopping -------------------------------------------------------------------------------------

def test_finished_rows_leave_the_batch(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    free = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=10), ids.shape[1])
    token = free[0][2]  # row 0 ends at its third token once that token is an EOS
    with extra_eos(models, token) as eos:
        gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
        with forward_batch_sizes(models) as sizes:
            out = gen.generate(ids, attention_mask=mask, max_new_tokens=10)
        rows = generated_rows(out, ids.shape[1], eos=eos)
        for row, prompt in zip(rows, prompts):
            assert row == naive_greedy(models, [1.0] * 3, [prompt] * 3, 10, eos=eos)
    assert len(rows[0]) <= 3
    # every model ran each step on the rows still going: prefill B, then one fewer per finished row
    live = [sum(len(r) > t for r in rows) for t in range(max(len(r) for r in rows))]
    assert sizes[0] == sizes[1] == sizes[2] == [len(TEXTS)] + live[1:]
    assert sizes[0][-1] < sizes[0][0]
    # after a row's end: pad (= EOS here: the tokenizer has no pad token)
    assert gen.pad_token_id == EOS
    assert (out[0, ids.shape[1] + len(rows[0]):] == EOS).all()


def test_stop_strings(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    free = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=10), ids.shape[1])
    text = tokenizer.decode(free[1][:6])
    stop = text[-2:] if text[-2:].strip() else text[-3:]

    def hits(out):
        return stop in tokenizer.decode(out)

    out = gen.generate(ids, attention_mask=mask, max_new_tokens=10, stop_strings=[stop])
    want = [naive_greedy(models, [1.0] * 3, [prompt] * 3, 10, stop=hits) for prompt in prompts]
    width = max(map(len, want))
    assert out.shape[1] == ids.shape[1] + width
    for row, tokens in zip(out[:, ids.shape[1]:].tolist(), want):
        assert row == tokens + [EOS] * (width - len(tokens))  # pad: EOS
    assert len(want[1]) <= 6 and stop in tokenizer.decode(want[1])


def test_max_new_tokens_zero_and_one(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    ids, mask = batch_of(raw_lists(tokenizer))
    assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=0), ids)
    assert gen.generate(ids, attention_mask=mask, max_new_tokens=1).shape == (len(TEXTS), ids.shape[1] + 1)


# --- sampling and keys ----------------------------------------------------------------------------

def test_seed_gives_the_same_text_whatever_the_batch(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], weights=[1.0, 1.0, -0.5], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    kwargs = dict(max_new_tokens=10, temperature=1.3, top_k=50, top_p=0.95, min_p=0.01)
    ids, mask = batch_of(prompts)
    full = generated_rows(gen.generate(ids, attention_mask=mask, seed=7, **kwargs), ids.shape[1])
    again = generated_rows(gen.generate(ids, attention_mask=mask, seed=7, **kwargs), ids.shape[1])
    assert full == again
    other = generated_rows(gen.generate(ids, attention_mask=mask, seed=8, **kwargs), ids.shape[1])
    assert other != full
    greedy = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=10), ids.shape[1])
    assert greedy != full
    # a subset, reordered: the same sentence indices give the same tokens
    pick = [3, 0, 2]
    sub_ids, sub_mask = batch_of([prompts[i] for i in pick])
    sub = gen.generate(sub_ids, attention_mask=sub_mask, seed=7, sentence_ids=pick, **kwargs)
    assert generated_rows(sub, sub_ids.shape[1]) == [full[i] for i in pick]
    # one sentence alone
    one = gen.generate(torch.tensor([prompts[2]]), seed=7, sentence_ids=[2], **kwargs)
    assert generated_rows(one, len(prompts[2])) == [full[2]]


def test_sampling_with_rows_leaving(models, tokenizer):
    """Rows that finish early leave the batch; the others' tokens do not change."""
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    kwargs = dict(max_new_tokens=10, temperature=1.0, seed=3)
    free = generated_rows(gen.generate(ids, attention_mask=mask, **kwargs), ids.shape[1])
    with extra_eos(models, free[1][1]) as eos:
        gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
        rows = generated_rows(gen.generate(ids, attention_mask=mask, **kwargs), ids.shape[1], eos=eos)
    for row, ref in zip(rows, free):
        end = next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))
        assert row == ref[:end]
    assert len(rows[1]) <= 2


def test_translate_sampling_independent_of_batch_size(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    a = gen.translate(TEXTS, "ja", "en", batch_size=4, max_new_tokens=8, temperature=0.9, seed=5)
    b = gen.translate(TEXTS, "ja", "en", batch_size=1, max_new_tokens=8, temperature=0.9, seed=5)
    c = gen.translate(TEXTS[2:], "ja", "en", batch_size=3, max_new_tokens=8, temperature=0.9, seed=5,
                      sentence_ids=[2, 3])
    assert a == b and c == a[2:]


def test_step_keys():
    sids = torch.arange(1000)
    keys = step_keys(0, sids, 0)
    assert len(set(keys.tolist())) == 1000
    assert not torch.equal(keys, step_keys(0, sids, 1)) and not torch.equal(keys, step_keys(1, sids, 0))
    assert torch.equal(step_keys(0, sids[[5, 2]], 3), step_keys(0, sids, 3)[[5, 2]])
    assert sentence_key(2**70 + 5, 2**40, 7) == int(step_keys(2**70 + 5, torch.tensor([2**40]), 7)[0])
    assert sentence_key(0, 0, 0) == 131092471  # the derivation is fixed: saved seeds replay
    with pytest.raises(ValueError, match="step"):
        step_keys(0, sids, -1)


# --- beam search ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", [
    (3, 1.0, False), (2, 0.5, True), (4, 1.5, "never"), (3, -1.0, False), (3, 0.0, "never")])
def test_beam_search_equals_naive_beam_loop(models, tokenizer, num_beams, length_penalty, early_stopping):
    weights = [1.0, 0.7, -0.4]
    prompts = raw_lists(tokenizer, TEXTS[:3])
    ids, mask = batch_of(prompts)
    gen = CollabGenerator(models[0], models[1:], weights=weights, tokenizer=tokenizer)
    free = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=3), ids.shape[1])
    # tokens the models like as end-of-sequence ids: hypotheses end at varied lengths, inputs finish early
    with extra_eos(models, free[0][1], free[1][2], free[2][1]) as eos:
        gen = CollabGenerator(models[0], models[1:], weights=weights, tokenizer=tokenizer)
        with forward_batch_sizes(models) as sizes:
            out = gen.generate(ids, attention_mask=mask, max_new_tokens=9, num_beams=num_beams,
                               length_penalty=length_penalty, early_stopping=early_stopping)
        rows = generated_rows(out, ids.shape[1], eos=eos)
        for row, prompt in zip(rows, prompts):
            assert row == naive_beam(models, weights, [prompt] * 3, num_beams, 9, eos=eos,
                                     length_penalty=length_penalty, early_stopping=early_stopping)
    assert sizes[0][0] == len(prompts)  # one prefill per input, not per beam
    assert max(sizes[0]) == len(prompts) * num_beams
    if early_stopping is True or length_penalty <= 0:
        assert sizes[0][-1] < max(sizes[0])  # inputs that are done left the batch


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_search_large_alone_matches_hugging_face(models, tokenizer, early_stopping):
    prompts = raw_lists(tokenizer)
    ids, mask = batch_of(prompts)
    gen = CollabGenerator(models[0], [], tokenizer=tokenizer)
    free = generated_rows(gen.generate(ids, attention_mask=mask, max_new_tokens=3), ids.shape[1])
    with extra_eos(models, free[0][1], free[1][2], free[2][1]) as eos:
        gen = CollabGenerator(models[0], [], tokenizer=tokenizer)
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=9, num_beams=3, early_stopping=early_stopping)
        want = models[0].generate(ids, attention_mask=mask, max_new_tokens=9, num_beams=3, do_sample=False,
                                  early_stopping=early_stopping, length_penalty=1.0, eos_token_id=list(eos),
                                  pad_token_id=EOS)
    assert torch.equal(out, want)


def test_beam_search_rejects_sampling(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    ids = torch.tensor([raw_lists(tokenizer)[0]])
    with pytest.raises(ValueError, match="beam"):
        gen.generate(ids, num_beams=2, temperature=0.7)
    with pytest.raises(ValueError, match="early_stopping"):
        gen.generate(ids, num_beams=2, early_stopping="sometimes")


# --- tokenizers, prompts, translate ---------------------------------------------------------------

def test_mismatching_tokenizer_raises_before_any_forward(tmp_path, models, tokenizer):
    other_tok = train_tokenizer([t[::-1] for t in CORPUS] + ["Bonjour le monde. Merci beaucoup."] * 4)
    assert other_tok.get_vocab() != tokenizer.get_vocab()
    other = load(save_collab_models(tmp_path, tokenizer=other_tok))
    with forward_batch_sizes([models[0], other[1]]) as sizes:
        with pytest.raises(ValueError, match="tokenizers differ"):
            CollabGenerator(models[0], [other[1]], tokenizer=tokenizer)
        with pytest.raises(ValueError, match="tokenizers differ"):
            CollabGenerator(models[0], [other[1]])
        # in-memory models, one tokenizer per model
        bare = [copy.deepcopy(models[0]), copy.deepcopy(models[1])]
        for m in bare:
            m.name_or_path = ""
        with pytest.raises(ValueError, match="tokenizers differ"):
            CollabGenerator(bare[0], [bare[1]], tokenizer=[tokenizer, other_tok])
    assert sizes == [[], []]


def test_prompt_format(tokenizer):
    ids = prompt_lists(tokenizer, ["今日は晴れです。"])[0]
    assert tokenizer.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Translate the following sentence from Japanese to English.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nJapanese:今日は晴れです。\nEnglish:<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    ids = prompt_lists(plain, ["猫"], "ja", "de")[0]
    assert plain.decode(ids) == "Translate the following sentence from Japanese to German.\nJapanese:猫\nGerman:"


def test_language_names():
    assert language_name("ja") == language_name("Japanese") == language_name("japanese") == "Japanese"
    assert [language_name(c) for c in ("de", "en", "zh", "ko", "fr", "zh-CN", "pt_BR")] == [
        "German", "English", "Chinese", "Korean", "French", "Chinese", "Portuguese"]
    assert language_name("Klingon") == "Klingon"
    with pytest.raises(ValueError, match="language code"):
        language_name("xx")


def test_translate_returns_stripped_text_in_order(models, tokenizer):
    gen = CollabGenerator(models[0], models[1:], tokenizer=tokenizer)
    texts = gen.translate(TEXTS, src_lang="Japanese", tgt_lang="en", batch_size=3, max_new_tokens=8)
    assert isinstance(texts, list) and len(texts) == len(TEXTS) and all(isinstance(t, str) for t in texts)
    prompts = prompt_lists(tokenizer)
    for text, prompt in zip(texts, prompts):
        row = naive_greedy(models, [1.0] * 3, [prompt] * 3, 8)
        assert text == tokenizer.decode(row, skip_special_tokens=True).strip()
        assert text == text.strip() and "<|" not in text
    assert gen.translate(TEXTS[1:2], "ja", "en", max_new_tokens=8) == texts[1:2]
    beams = gen.translate(TEXTS[:2], "ja", "en", max_new_tokens=5, num_beams=2)
    assert len(beams) == 2
    assert gen.translate([], "ja", "en") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_side_streams_change_nothing_on_gpu(models, tokenizer):
    cuda = [copy.deepcopy(m).cuda() for m in models]
    ids, mask = batch_of(raw_lists(tokenizer))
    outs = []
    for overlap in (False, True):
        gen = CollabGenerator(cuda[0], cuda[1:], weights=[1.0, 1.0, -0.5], tokenizer=tokenizer,
                              overlap_streams=overlap)
        greedy = gen.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=10)
        sampled = gen.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=10, greedy=False,
                               top_p=0.9, seed=3)
        beams = gen.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=6, num_beams=3)
        outs.append((greedy.cpu(), sampled.cpu(), beams.cpu()))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    # and the GPU's greedy text is the CPU's
    cpu_gen = CollabGenerator(models[0], models[1:], weights=[1.0, 1.0, -0.5], tokenizer=tokenizer)
    assert torch.equal(cpu_gen.generate(ids, attention_mask=mask, max_new_tokens=10), outs[1][0])
