"""`mtkernels translate` end to end on tiny random models (fresh processes, as a user runs it),
its one-line errors, a 2-process gloo run against a single process, and `mtkernels.metrics`."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from mtkernels import metrics
from mtkernels import translate as tr

from .tiny_models import save_collab_models

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["今日は晴れです。", "猫が好きです。", "東京は大きな都市です。", "電車で駅に行きました。", "ありがとうございます。"]
REFS = ["The weather is nice today.", "I like cats.", "Tokyo is a big city.", "I went to the station by train.",
        "Thank you."]
ERROR_PREFIX = "mtkernels translate: error: "

needs_generator = pytest.mark.skipif(importlib.util.find_spec("mtkernels.generation") is None,
                                     reason="mtkernels.generation is not in this tree")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTKERNELS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add contention on a shared machine
    return env


def _translate(*args, timeout=150):
    return subprocess.run([sys.executable, "-m", "mtkernels", "translate", *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _torchrun(*args, nproc=2, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mtkernels", "translate", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    dirs = save_collab_models(root / "models")
    (root / "src.txt").write_text("".join(s + "\n" for s in SOURCES), encoding="utf-8")
    (root / "ref.txt").write_text("".join(r + "\n" for r in REFS), encoding="utf-8")
    models = ["--large", dirs["large"], "--small", dirs["small_src"], "--small", dirs["small_tgt"]]
    common = models + ["--src-lang", "ja", "--tgt-lang", "en", "--input", root / "src.txt",
                       "--max-new-tokens", "8", "--batch-size", "2"]
    return {"root": root, "dirs": dirs, "models": models, "common": common, "runs": {}}


SAMPLING = ("--temperature", "0.9", "--top-p", "0.95", "--top-k", "40", "--seed", "7")
SINGLE_RUNS = {"greedy": (), "sampled": SAMPLING}  # the sampled run writes its hypotheses to stdout


def _single_run(data, name):
    """``(hypotheses text, process)`` of a single-process run (run once per name, shared by the tests)."""
    if name not in data["runs"]:
        args = [*data["common"], "--ref", data["root"] / "ref.txt", *SINGLE_RUNS[name]]
        out = data["root"] / f"{name}.txt"
        proc = _translate(*args) if name == "sampled" else _translate(*args, "--output", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data["runs"][name] = (proc.stdout if name == "sampled" else out.read_text(encoding="utf-8"), proc)
    return data["runs"][name]


# --- end to end -------------------------------------------------------------------------------------

@needs_generator
def test_end_to_end_writes_hypotheses_and_scores(data):
    text, proc = _single_run(data, "greedy")
    hyps = text.split("\n")[:-1]
    assert len(hyps) == len(SOURCES) and text.endswith("\n")
    out = proc.stdout
    assert "BLEU = " in out and "chrF2 = " in out
    signatures = [line.split("signature: ")[1] for line in out.splitlines() if "signature: " in line]
    assert len(signatures) == 2
    assert signatures[0].startswith("nrefs:1|") and "tok:13a" in signatures[0] and "nc:6" in signatures[1]
    bleu = sacrebleu.corpus_bleu(hyps, [REFS], tokenize="13a")
    assert f"BLEU = {bleu.score:.2f}" in out
    assert "sent" in proc.stderr  # the progress bar, on stderr
    assert not [p for p in data["root"].iterdir() if p.name.endswith(".tmp")]


@needs_generator
def test_hypotheses_to_stdout_scores_to_stderr(data):
    text, proc = _single_run(data, "sampled")
    assert len(text.splitlines()) == len(SOURCES) and text.endswith("\n")  # nothing else on stdout
    assert "BLEU = " in proc.stderr and "chrF2 = " in proc.stderr and "signature: " in proc.stderr


@needs_generator
def test_baseline_prints_both_systems(data):
    greedy, _ = _single_run(data, "greedy")
    out = data["root"] / "baseline.txt"
    proc = _translate(*data["common"], "--ref", data["root"] / "ref.txt", "--output", out, "--baseline",
                      "--weights", "1,0.5,0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["system", "BLEU", "chrF"]
    collab = next(line for line in lines if line.startswith("collab (large + 2 small)"))
    alone = next(line for line in lines if line.startswith("large model alone"))
    for row in (collab, alone):
        bleu, chrf = map(float, row.split()[-2:])
        assert 0 <= bleu <= 100 and 0 <= chrf <= 100
    assert any(line.startswith("BLEU signature: nrefs:1|") for line in lines)
    assert any(line.startswith("chrF signature: nrefs:1|") for line in lines)
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(SOURCES)  # the collaborative hypotheses
    assert "large model alone" in proc.stderr  # its own progress bar


@needs_generator
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_two_process_gloo_run_matches_single_process(data, mode):
    single, _ = _single_run(data, mode)
    out = data["root"] / f"dist-{mode}.txt"
    proc = _torchrun(*data["common"], "--ref", data["root"] / "ref.txt", "--output", out, *SINGLE_RUNS[mode])
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert out.read_text(encoding="utf-8") == single
    assert proc.stdout.count("BLEU = ") == 1  # scores from rank 0 only


# --- errors -----------------------------------------------------------------------------------------

def _error_cases(root, dirs):
    src, ref = root / "src.txt", root / "ref.txt"
    short_ref = root / "short_ref.txt"
    short_ref.write_text("one line\n", encoding="utf-8")
    bad_utf8 = root / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9\n".encode("latin-1"))
    large, small = ["--large", dirs["large"]], ["--small", dirs["small_src"]]
    lang = ["--src-lang", "ja", "--tgt-lang", "en"]
    ok = large + small + lang + ["--input", src]
    return {
        "missing input": (large + lang + ["--input", root / "nope.txt"], "--input"),
        "input is a folder": (large + lang + ["--input", root], "is a directory"),
        "input not utf-8": (large + lang + ["--input", bad_utf8], "not UTF-8"),
        "missing ref": (ok + ["--ref", root / "nope.txt"], "--ref"),
        "line count mismatch": (ok + ["--ref", short_ref], "1 lines, but --input"),
        "missing large": (["--large", root / "no_model"] + lang + ["--input", src], "--large"),
        "missing small": (large + ["--small", root / "no_small"] + lang + ["--input", src], "--small"),
        "weights count": (ok + ["--weights", "1,1,1"], "3 weights for 2 models"),
        "weights count with baseline": (ok + ["--weights", "1", "--ref", ref, "--baseline"], "1 weights for 2 models"),
        "weights not numbers": (ok + ["--weights", "1,x"], "--weights"),
        "top-p": (ok + ["--top-p", "1.5"], "--top-p"),
        "temperature": (ok + ["--temperature", "0"], "--temperature"),
        "min-p": (ok + ["--min-p", "1"], "--min-p"),
        "top-k negative": (ok + ["--top-k", "-1"], "--top-k"),
        "top-k above vocab": (ok + ["--top-k", "100000"], "vocabulary size"),
        "top-k not an int": (ok + ["--top-k", "many"], "--top-k"),
        "greedy and sampling": (ok + ["--greedy", "--temperature", "0.5"], "--greedy"),
        "beams and sampling": (ok + ["--num-beams", "2", "--top-p", "0.9"], "--num-beams"),
        "baseline without ref": (ok + ["--baseline"], "--ref"),
        "unknown language": (large + ["--src-lang", "xx", "--tgt-lang", "en", "--input", src], "--src-lang"),
        "output folder missing": (ok + ["--output", root / "no_dir" / "out.txt"], "does not exist"),
        "missing required": (large + ["--input", src], "required"),
        "unknown option": (ok + ["--frobnicate"], "unrecognized"),
    }


# Each in a fresh process; the other cases run in this process (test_more_bad_inputs_in_process).
PROCESS_CASES = ["missing input", "line count mismatch", "missing large", "missing small", "weights count",
                 "weights count with baseline", "top-p", "temperature", "output folder missing"]


@pytest.fixture(scope="module")
def error_runs(data):
    """Every PROCESS_CASES process, two at a time, each with an output path in its own empty folder."""
    from concurrent.futures import ThreadPoolExecutor

    cases = _error_cases(data["root"], data["dirs"])

    def one(case):
        args, needle = cases[case]
        folder = data["root"] / "errors" / case.replace(" ", "_")
        folder.mkdir(parents=True)
        if "--output" not in args:
            args = args + ["--output", folder / "out.txt"]
        return case, (_translate(*args, timeout=90), folder, needle)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, PROCESS_CASES))


@needs_generator
@pytest.mark.parametrize("case", PROCESS_CASES)
def test_bad_input_one_line_error_exit_2_nothing_written(error_runs, case):
    proc, folder, needle = error_runs[case]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), proc.stderr
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""
    assert list(folder.iterdir()) == []


@needs_generator
def test_more_bad_inputs_in_process(data, tmp_path, capsys):
    from mtkernels.cli import main

    cases = _error_cases(data["root"], data["dirs"])
    assert set(PROCESS_CASES) < set(cases)
    for case, (args, needle) in cases.items():
        if case in PROCESS_CASES:
            continue
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        if "--output" not in args:
            args = args + ["--output", folder / "out.txt"]
        try:
            status = main(["translate", *map(str, args)])
        except SystemExit as exc:  # argparse's errors
            status = exc.code
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert status == 2, (case, captured.err)
        assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and needle in lines[0], (case, captured.err)
        assert captured.out == "" and list(folder.iterdir()) == [], case


# --- pieces -----------------------------------------------------------------------------------------

def test_batches_split_over_ranks_cover_every_line_once():
    sources = ["a" * n for n in (3, 9, 1, 4, 4, 7, 2)]
    batches = tr.make_batches(sources, 2)
    assert sorted(i for b in batches for i in b) == list(range(len(sources)))
    assert [len(sources[b[0]]) for b in batches] == sorted((len(sources[b[0]]) for b in batches), reverse=True)
    for world in (1, 2, 3, 8):
        parts = [tr.rank_batches(batches, world, r) for r in range(world)]
        assert sorted(map(tuple, (b for p in parts for b in p))) == sorted(map(tuple, batches))


def test_read_lines_and_atomic_write(tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes("\ufeffone\r\ntwo\n\nthree".encode("utf-8"))
    assert tr.read_lines(str(f), "--input") == ["one", "two", "", "three"]
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    tr.write_atomic(str(out), ["a", "b"])
    assert out.read_text() == "a\nb\n" and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
    assert tr.clean(" x\ny\u2028z ") == "x y z"


def test_parse_weights():
    assert tr.parse_weights(None, 3) == [1.0, 1.0, 1.0]
    assert tr.parse_weights("1,-0.5,2", 3) == [1.0, -0.5, 2.0]
    for bad in ("1,1", "1,nan,1", "1,,1", "1,1e39,1"):
        with pytest.raises(tr.UsageError):
            tr.parse_weights(bad, 3)


# --- metrics ----------------------------------------------------------------------------------------

def test_bleu_tokenizer_choice(monkeypatch):
    assert metrics.language_code("ja-JP") == metrics.language_code("jpn") == metrics.language_code("Japanese") == "ja"
    monkeypatch.setattr(metrics, "mecab_available", lambda: True)
    assert metrics.bleu_tokenizer("ja") == "ja-mecab"
    assert metrics.bleu_tokenizer("zh") == metrics.bleu_tokenizer("ko-KR") == "char"
    monkeypatch.setattr(metrics, "mecab_available", lambda: False)
    assert metrics.bleu_tokenizer("ja") == "char"
    assert metrics.bleu_tokenizer("en") == metrics.bleu_tokenizer("de") == "13a"


def test_mecab_available_matches_sacrebleu():
    try:
        sacrebleu.BLEU(tokenize="ja-mecab").corpus_score(["猫"], [["猫"]])
        works = True
    except Exception:
        works = False
    assert metrics.mecab_available() is works


@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_corpus_scores_match_sacrebleu(lang):
    hyps = ["The weather is good today.", "I like dogs.", "東京は都市です。"]
    refs = ["The weather is nice today.", "I like cats.", "東京は大きな都市です。"]
    scores = metrics.corpus_scores(hyps, refs, lang)
    tok = metrics.bleu_tokenizer(lang)
    assert scores["tokenize"] == tok
    bleu = sacrebleu.BLEU(tokenize=tok)
    assert scores["bleu"] == pytest.approx(bleu.corpus_score(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["bleu_signature"] == str(bleu.get_signature()) and f"tok:{tok}" in scores["bleu_signature"]
    chrf = sacrebleu.CHRF()
    chrf.corpus_score(hyps, [refs])
    assert scores["chrf_signature"] == str(chrf.get_signature())
    with pytest.raises(ValueError):
        metrics.corpus_scores(hyps, refs[:2], lang)


def test_flash_attention_only_for_half_precision_on_gpu_with_flash_attn(monkeypatch):
    real = importlib.util.find_spec
    for installed in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if installed else None) if name == "flash_attn" else real(name, *a))
        want = "flash_attention_2" if installed else None
        assert tr.attention_implementation("cuda:0", "bfloat16") == want
        assert tr.attention_implementation("cuda:1", "float16") == want
        assert tr.attention_implementation("cuda:0", "float32") is None  # flash-attn has no fp32 kernels
        assert tr.attention_implementation("cpu", "bfloat16") is None
