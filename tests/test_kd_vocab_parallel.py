"""The vocabulary-parallel KD loss on two CPU processes (gloo): each rank holds an uneven slice of the
vocabulary; values, stats and gradients against the single-device loss on the whole heads, and bad input
raising the same error on every rank (docs/kd.md, "Vocabulary-parallel").

One spawn of the two ranks runs every case (tests/kd_vocab_parallel_worker.py); the tests read its results.
"""

import pytest

from . import kd_vocab_parallel_worker as worker
from .spawn import run_ranks

TIMEOUT_S = 150  # both ranks, every case; well under a minute when the machine is not loaded


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's results: ``{case: None or its traceback, "bad_inputs": {case: (error type, message)}}``."""
    tmp = tmp_path_factory.mktemp("vocab_parallel")
    return run_ranks(worker.worker, tmp, worker.WORLD_SIZE, TIMEOUT_S, "the vocabulary-parallel ranks")


@pytest.mark.parametrize("case", sorted(worker.CASES))
def test_matches_single_device(ranks, case):
    for rank, results in enumerate(ranks):
        assert results[case] is None, f"rank {rank}:\n{results[case]}"


BAD_EXPECTED = {
    "slices_do_not_add_up": (ValueError, "teacher_weight: .*do not add up.*student \\[120, 181\\].*teacher \\[120, 180\\]"),
    "label_out_of_global_range": (ValueError, "labels: must be in \\[0, 301\\)"),
    "labels_differ_between_ranks": (ValueError, "labels: every rank .* same"),
    "rows_differ_between_ranks": (ValueError, "student_input: every rank .* same N rows.*\\[37, 36\\]"),
    "bad_dtype_on_one_rank": (TypeError, "student_input: dtype.*on rank 0 of vocab_parallel_group"),
    "dtensor_weight": (TypeError, "student_weight: a DTensor"),
    "not_a_group": (TypeError, "vocab_parallel_group: expected a torch.distributed ProcessGroup"),
    "options_differ_between_ranks": (ValueError, "options .* differ between ranks"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPECTED))
def test_bad_input_raises_the_same_error_on_every_rank(ranks, case):
    import re

    expected_type, pattern = BAD_EXPECTED[case]
    seen = [results["bad_inputs"][case] for results in ranks]
    assert all(s is not None for s in seen), f"no error: {seen}"
    assert seen[0] == seen[1], f"the ranks raised different errors: {seen}"
    assert seen[0][0] == expected_type.__name__, seen[0]
    assert re.search(pattern, seen[0][1]), seen[0][1]


def test_worker_cases_are_all_known():
    assert set(worker.BAD) == set(BAD_EXPECTED)


def test_group_without_torch_distributed_is_refused():
    """In this process torch.distributed is not initialised: a clear error, no collective attempted."""
    import mtkernels

    case = worker.make_case(n=4)
    with pytest.raises(ValueError, match="vocab_parallel_group: torch.distributed is not initialised"):
        mtkernels.self_evolution_kd_loss(case["student_input"], case["student_weight"], case["teacher_input"],
                                         case["teacher_weight"], case["labels"], vocab_parallel_group=object())
