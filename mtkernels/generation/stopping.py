"""When a sequence stops: an end-of-sequence token, a stop string, or the token budget.

Stop strings are matched in the decoded text of the generated tokens only (not the prompt); a
sequence stops at the token that completes one, and that token is kept (as in Hugging Face's
``stop_strings``). Only the last few tokens are decoded at each step: a stop string of c
characters spans at most 4c + 1 tokens of a byte-level vocabulary.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, List, Optional, Sequence, Union


class StopCriteria:
    """``eos_token_ids``: ids that end a sequence. ``stop_strings``: a string or strings that end
    it once the generated text contains them (needs ``tokenizer``)."""

    def __init__(self, eos_token_ids: Iterable[int], stop_strings: Union[str, Sequence[str], None] = None,
                 tokenizer=None):
        self.eos_token_ids: FrozenSet[int] = frozenset(int(i) for i in eos_token_ids)
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        self.stop_strings: List[str] = list(stop_strings or [])
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop_strings: expected non-empty strings, got {s!r}")
        if self.stop_strings and tokenizer is None:
            raise ValueError("stop_strings: need a tokenizer to decode the generated text")
        self.tokenizer = tokenizer
        self._tail = 4 * max((len(s) for s in self.stop_strings), default=0) + 8

    def is_eos(self, token: int) -> bool:
        return token in self.eos_token_ids

    def hits_stop_string(self, generated: Sequence[int]) -> bool:
        """Whether the generated tokens, the last one just added, complete a stop string."""
        if not self.stop_strings:
            return False
        text = self.tokenizer.decode(list(generated[-self._tail:]), skip_special_tokens=False)
        return any(s in text for s in self.stop_strings)

    def finished(self, generated: Sequence[int], max_new_tokens: int) -> bool:
        """Whether a sequence whose generated tokens are ``generated`` (non-empty) stops here."""
        return (len(generated) >= max_new_tokens or generated[-1] in self.eos_token_ids
                or self.hits_stop_string(generated))

    def cut_text(self, text: str) -> str:
        """``text`` up to the first stop string (for decoded translations)."""
        cut: Optional[int] = None
        for s in self.stop_strings:
            at = text.find(s)
            if at >= 0 and (cut is None or at < cut):
                cut = at
        return text if cut is None else text[:cut]
