"""Token alignment between a source and a target prompt, for Prompt-to-Prompt attention edits.

Everything here is a pure function of the prompts and the tokenizer. Positions index the padded
77-token sequence the text encoder sees: position 0 is the start token, the prompt's tokens follow,
then the end token and padding.

  swap      same number of words; each source word's tokens map onto the target word's tokens
  refine    target adds or changes words; shared tokens are aligned (longest matching blocks)
  reweight  a per-token scale for chosen words (Hertz et al., 2022, sec. 3.2 "attention re-weighting")
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def sequence_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens the text encoder sees per prompt (77 for CLIP)."""
    return int(tokenizer.model_max_length)


def word_tokens(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """BPE token ids of one whitespace-free word (CLIP encodes words independently)."""
    return list(tokenizer.encode(word, add_special_tokens=False))


def words_of(prompt: str) -> list[str]:
    """The prompt's whitespace-separated words."""
    return prompt.split()


def word_spans(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[tuple[str, list[int]]]:
    """Each word of the prompt with the positions its tokens take (start token at 0; truncated at the end)."""
    last = sequence_length(tokenizer) - 2  # the end token must fit
    spans, position = [], 1
    for word in words_of(prompt):
        count = len(word_tokens(tokenizer, word))
        positions = [p for p in range(position, position + count) if p <= last]
        spans.append((word, positions))
        position += count
    return spans


def prompt_length(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    """Number of the prompt's own tokens that fit (no start or end token)."""
    spans = word_spans(tokenizer, prompt)
    return sum(len(positions) for _, positions in spans)


def _normalise(word: str) -> str:
    return word.lower().strip(".,;:!?\"'()")


def word_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of `word` (case and punctuation ignored) in the prompt."""
    wanted = _normalise(word)
    return [p for w, positions in word_spans(tokenizer, prompt) if _normalise(w) == wanted for p in positions]


def phrase_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, phrase: str) -> list[int]:
    """Token positions of every occurrence of the words of `phrase` in a row ("green square" in "a blue
    square and a green square": the second "square" only); where the phrase never occurs whole, every
    occurrence of each of its words."""
    wanted = [_normalise(word) for word in phrase.split()]
    spans = word_spans(tokenizer, prompt)
    words = [_normalise(word) for word, _ in spans]
    found = [
        p
        for start in range(len(spans) - len(wanted) + 1)
        if words[start : start + len(wanted)] == wanted
        for _, positions in spans[start : start + len(wanted)]
        for p in positions
    ]
    return sorted(set(found)) if found else blend_positions(tokenizer, prompt, tuple(phrase.split()))


def _tail(tokenizer: PreTrainedTokenizerBase, source_length: int, target_length: int) -> list[tuple[int, int]]:
    """(source, target) position pairs for the start token and the end token plus padding."""
    total = sequence_length(tokenizer)
    pairs = [(0, 0)]
    for offset in range(total - 1 - max(source_length, target_length)):
        pairs.append((source_length + 1 + offset, target_length + 1 + offset))
    return pairs


def swap_mapper(tokenizer: PreTrainedTokenizerBase, source: str, target: str) -> torch.Tensor:
    """(77, 77) matrix M with target attention = source attention @ M, for a word swap.

    Word i of the source maps to word i of the target; when their token counts differ, every target
    token gets the mean of the source word's tokens.
    """
    source_spans, target_spans = word_spans(tokenizer, source), word_spans(tokenizer, target)
    if len(source_spans) != len(target_spans):
        raise ConfigError(
            f"a word swap needs prompts with the same number of words ({len(source_spans)} vs {len(target_spans)}); use --edit refine"
        )
    total = sequence_length(tokenizer)
    mapper = torch.zeros(total, total)
    for (_, s), (_, t) in zip(source_spans, target_spans):
        if len(s) == len(t):
            for i, j in zip(s, t):
                mapper[i, j] = 1.0
        elif s and t:
            mapper[torch.tensor(s)[:, None], torch.tensor(t)[None, :]] = 1.0 / len(s)
    for i, j in _tail(tokenizer, prompt_length(tokenizer, source), prompt_length(tokenizer, target)):
        mapper[i, j] = 1.0
    return mapper


def refine_alignment(tokenizer: PreTrainedTokenizerBase, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target position: the aligned source position, and 1 where one exists (else 0).

    Shared tokens are aligned by the longest matching blocks of the two token sequences; target
    tokens with no counterpart (added words) keep their own attention.
    """
    total = sequence_length(tokenizer)
    source_ids = [i for w, _ in word_spans(tokenizer, source) for i in word_tokens(tokenizer, w)][
        : prompt_length(tokenizer, source)
    ]
    target_ids = [i for w, _ in word_spans(tokenizer, target) for i in word_tokens(tokenizer, w)][
        : prompt_length(tokenizer, target)
    ]
    index = torch.arange(total)
    alpha = torch.zeros(total)
    matcher = difflib.SequenceMatcher(None, source_ids, target_ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            index[block.b + k + 1] = block.a + k + 1
            alpha[block.b + k + 1] = 1.0
    for i, j in _tail(tokenizer, len(source_ids), len(target_ids)):
        index[j], alpha[j] = i, 1.0
    return index, alpha


def reweight_vector(tokenizer: PreTrainedTokenizerBase, prompt: str, weights: dict[str, float]) -> torch.Tensor:
    """(77,) scale per token: each word's tokens get its weight, every other token 1."""
    vector = torch.ones(sequence_length(tokenizer))
    for word, weight in weights.items():
        positions = word_positions(tokenizer, prompt, word)
        if not positions:
            raise ConfigError(f"reweighted word {word!r} is not in the prompt {prompt!r}")
        vector[positions] = float(weight)
    return vector


def blend_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, words: tuple[str, ...]) -> list[int]:
    """Token positions of those `words` that occur in the prompt (others are ignored)."""
    return sorted({p for word in words for p in word_positions(tokenizer, prompt, word)})
