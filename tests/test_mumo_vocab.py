"""mtkernels.mumo: the monolingual vocabulary (script filters, forward maximum matching, training
targets, files), the head's initialisation and files, and morpheme counts."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from mtkernels.mumo import JAPANESE, KOREAN, MonoVocab, MuMoHead, Unit, morphemes  # noqa: E402

from .tiny_models import tiny_llama, train_tokenizer  # noqa: E402

WORDS = Path(__file__).parent.joinpath("data", "ja_words.txt").read_text(encoding="utf-8").split()
ENGLISH = ["The weather is nice today. I went to the station by train and read a book.",
           "Translate the following sentence from Japanese to English, please.",
           "We study languages, music, history and the economy at the university."] * 8
# mostly English, with a little Japanese: some Japanese words become single base tokens
BASE_CORPUS = ENGLISH + ["です。ます。です。ます。"] * 6


@pytest.fixture(scope="module")
def base_tok():
    return train_tokenizer(BASE_CORPUS, vocab_size=420)


@pytest.fixture(scope="module")
def vocab(base_tok):
    return MonoVocab.from_words(WORDS, base_tok)


def n_tokens(tok, word):
    return len(tok.encode(word, add_special_tokens=False))


# --- building ------------------------------------------------------------------------------------

def test_japanese_words_fragment_and_the_vocabulary_keeps_them(base_tok, vocab):
    assert len(WORDS) > 250
    assert sum(n_tokens(base_tok, w) for w in WORDS) / len(WORDS) > 3  # really fragmented
    assert len(vocab) > 250
    for w, ids in zip(vocab.words, vocab.base_ids):
        assert list(ids) == base_tok.encode(w, add_special_tokens=False) and len(ids) >= 2
    assert len(set(vocab.words)) == len(vocab.words)


def test_words_of_one_base_token_are_dropped(base_tok):
    assert n_tokens(base_tok, "です") == 1 and n_tokens(base_tok, "電車") > 1
    v = MonoVocab.from_words(["です", "電車", "電車", "ます"], base_tok)
    assert v.words == ["電車"]


def test_script_filters(base_tok):
    words = ["ひらがな", "カタカナ", "漢字", "Tシャツ", "日本語", "hello", "한국어", "ソウル", "々", "ｶﾀｶﾅ", " 電車 ", ""]
    assert MonoVocab.from_words(words, base_tok).words == ["ひらがな", "カタカナ", "漢字", "日本語", "ソウル", "々",
                                                           "ｶﾀｶﾅ", "電車"]
    assert MonoVocab.from_words(words, base_tok, scripts=("katakana",)).words == ["カタカナ", "ソウル", "ｶﾀｶﾅ"]
    assert MonoVocab.from_words(words, base_tok, scripts=KOREAN).words == ["한국어"]
    latin = MonoVocab.from_words(words, base_tok, scripts=[(ord("a"), ord("z"))])
    assert all(w.isascii() and w.isalpha() for w in latin.words)
    assert MonoVocab.from_words(words, base_tok, scripts=JAPANESE + ((ord("A"), ord("Z")),)).words[3] == "Tシャツ"
    for bad in (["klingon"], [(5, 2)], [(0, 0x110000)], [], [1.5]):
        with pytest.raises(ValueError, match="scripts"):
            MonoVocab.from_words(words, base_tok, scripts=bad)


def test_from_tokenizer_takes_the_target_vocabulary(base_tok):
    ja_corpus = ["今日は晴れです。電車で駅に行きました。", "私は日本語を勉強しています。東京は大きな都市です。",
                 "ありがとうございます。猫が好きです。"] * 10
    target = train_tokenizer(ja_corpus, vocab_size=400)
    v = MonoVocab.from_tokenizer(target, base_tok)
    assert len(v) > 10
    items = [target.decode([i]).strip() for i in range(len(target)) if i not in target.all_special_ids]
    assert set(v.words) <= set(items)
    assert v.words == MonoVocab.from_words(items, base_tok).words
    assert "<|eot_id|>" not in v.words


# --- forward maximum matching --------------------------------------------------------------------

def hand_vocab():
    # words: 0 = (1, 2), 1 = (1, 2, 3), 2 = (3, 4), 3 = (2, 3, 4, 5)
    return MonoVocab(["a", "b", "c", "d"], [(1, 2), (1, 2, 3), (3, 4), (2, 3, 4, 5)])


def test_segment_hand_checked():
    v = hand_vocab()
    assert v.segment([1, 2, 3, 4, 9]) == [Unit(0, 3, 1), Unit(3, 1, None), Unit(4, 1, None)]  # longest first, greedy
    assert v.segment([2, 3, 4, 5, 1, 2]) == [Unit(0, 4, 3), Unit(4, 2, 0)]
    assert v.segment([3, 4, 3]) == [Unit(0, 2, 2), Unit(2, 1, None)]
    assert v.segment([1, 3, 2, 3, 4]) == [Unit(0, 1, None), Unit(1, 1, None), Unit(2, 1, None), Unit(3, 2, 2)]
    assert v.segment(torch.tensor([1, 2])) == [Unit(0, 2, 0)]
    assert v.segment([]) == []


def test_training_targets_follow_the_units():
    v = hand_vocab()
    ids = torch.tensor([[7, 1, 2, 3, 4, 9]])
    # units: 7 | b(1 2 3) | 4 | 9 -> position t predicts the unit starting at t + 1
    assert v.training_targets(ids, num_base_tokens=100).tolist() == [[101, -100, -100, 4, 9, -100]]
    assert v.training_targets(ids, num_base_tokens=100, ignore_index=-1).tolist() == [[101, -1, -1, 4, 9, -1]]


def test_training_targets_skip_padding_either_side():
    v = hand_vocab()
    rows = [[7, 1, 2, 3, 4, 9], [2, 3, 4, 5, 1, 2, 8], [3, 4]]
    width = 9
    for side in ("left", "right"):
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[b, cols], mask[b, cols] = torch.tensor(r), 1
        got = v.training_targets(ids, mask, num_base_tokens=50)
        for b, r in enumerate(rows):
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            alone = v.training_targets(torch.tensor([r]), num_base_tokens=50)[0]
            assert torch.equal(got[b, cols], alone)
            assert bool((got[b][mask[b] == 0] == -100).all())
    with pytest.raises(ValueError, match="input_ids"):
        v.training_targets(torch.tensor([1, 2]), num_base_tokens=50)
    with pytest.raises(ValueError, match="attention_mask"):
        v.training_targets(torch.tensor([[1, 2]]), torch.tensor([[1, 1, 1]]), num_base_tokens=50)


def test_segment_real_japanese(base_tok, vocab):
    sentence = "今日は天気がいいので、電車で図書館に行きました。"
    ids = base_tok.encode(sentence, add_special_tokens=False)
    units = vocab.segment(ids)
    assert sum(u.length for u in units) == len(ids) and [u.start for u in units] == sorted(u.start for u in units)
    found = {vocab.words[u.word] for u in units if u.word is not None}
    assert {"電車", "図書館"} <= found, found
    for u in units:  # each word unit really is that word's tokens
        if u.word is not None:
            assert tuple(ids[u.start:u.start + u.length]) == vocab.base_ids[u.word]


def test_vocab_rejects_words_of_fewer_than_two_tokens():
    with pytest.raises(ValueError, match="two or more"):
        MonoVocab(["x"], [(3,)])
    with pytest.raises(ValueError, match="words"):
        MonoVocab(["x", "y"], [(3, 4)])


def test_save_and_load(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    vocab.save(str(path))
    back = MonoVocab.load(str(path))
    assert back.words == vocab.words and back.base_ids == vocab.base_ids
    assert "電車" in path.read_text(encoding="utf-8")  # readable JSON, not escapes
    (tmp_path / "other.json").write_text('{"words": []}')
    with pytest.raises(ValueError, match="not a MonoVocab"):
        MonoVocab.load(str(tmp_path / "other.json"))


# --- head ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_model(base_tok):
    return tiny_llama(len(base_tok) + 3, hidden=32, layers=1, seed=5)


def test_head_rows_start_as_the_mean_of_base_rows(base_model, vocab):
    head = MuMoHead(base_model, vocab)
    w = base_model.lm_head.weight.detach().double()
    assert head.mono_weight.shape == (len(vocab), 32) and head.ffn_size == 8
    for j in (0, len(vocab) // 2, len(vocab) - 1):
        want = sum(w[t] for t in vocab.base_ids[j]) / len(vocab.base_ids[j])
        torch.testing.assert_close(head.mono_weight[j].double(), want, rtol=1e-6, atol=1e-7)
    h = torch.randn(5, 32)
    torch.testing.assert_close(head.features(h), h)  # the residual block starts as the identity
    # so an untrained head scores a word by the mean of its tokens' base logits
    base_logits = h @ base_model.lm_head.weight.T
    word = vocab.base_ids[3]
    torch.testing.assert_close(head.mono_logits(h)[:, 3], base_logits[:, list(word)].mean(1), rtol=1e-5, atol=1e-5)


def test_head_save_and_load(tmp_path, base_model, vocab, base_tok):
    head = MuMoHead(base_model, vocab)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    head.save_pretrained(str(tmp_path / "head"))
    back = MuMoHead.from_pretrained(str(tmp_path / "head"), base_model)
    h = torch.randn(4, 32)
    assert torch.equal(back.mono_logits(h), head.mono_logits(h)) and back.vocab.words == vocab.words
    other = tiny_llama(len(base_tok) + 3, hidden=48, layers=1, seed=5)
    with pytest.raises(ValueError, match="base_model"):
        MuMoHead.from_pretrained(str(tmp_path / "head"), other)


def test_head_rejects_a_vocabulary_beyond_the_base_head(base_model):
    with pytest.raises(ValueError, match="vocab"):
        MuMoHead(base_model, MonoVocab(["x"], [(1, 10**6)]))


# --- morphemes -----------------------------------------------------------------------------------

def test_morphemes_japanese():
    pytest.importorskip("fugashi")
    pytest.importorskip("unidic_lite")
    assert morphemes("今日は晴れです。", "ja") == 5          # 今日 / は / 晴れ / です / 。
    assert morphemes("電車で駅に行きました。", "Japanese") == 8  # 電車 / で / 駅 / に / 行き / まし / た / 。
    assert morphemes("今日は 晴れ", "ja") == 3
    with pytest.raises(ValueError, match="lang"):
        morphemes("hello", "en")
