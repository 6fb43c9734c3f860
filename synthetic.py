"""
Synthetic data, generated on the fly from a seeded RNG (no files): passkey examples and integer
addition problems. train.py trains on them (passkey_frac, addition_digits); eval_tasks.py scores them.

Passkey (Mohtashami & Jaggi, 2023): the filler "The grass is green. ..." repeated, the line "The pass
key is N. Remember it. N is the pass key." at a depth (0 = right after the start, 1 = right before
the question), then "What is the pass key? The pass key is" and " N".

Addition (McLeish et al. 2024, "Abacus embeddings", as TAPE uses it): EOT, then `a+b=c` with the
digits of a, b and c reversed (least significant first), then EOT, which ends the answer. One
problem per row, padded with EOT; the loss covers the answer (c and the closing EOT) only. Operands
have exactly d digits (no leading zero), d drawn from 1..N for each operand independently.
"""
import numpy as np

# -----------------------------------------------------------------------------
# passkey retrieval

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
KEY_DIGITS = 5


class PromptTooLong(ValueError):
    """A task's prompt does not fit in the asked length."""


def passkey_example(encode, eot, length, depth, key):
    """(ids, n_answer): EOT, filler with the key line at `depth` in [0, 1], the question and ' key',
    `length` tokens in all; the last n_answer tokens are the answer."""
    key_line, question, answer = encode(KEY_LINE.format(key=key)), encode(QUESTION), encode(f" {key}")
    n_fill = length - 1 - len(key_line) - len(question) - len(answer)
    if n_fill < 0:
        raise PromptTooLong(f"a passkey example needs {length - n_fill} tokens, more than {length}")
    fill, reps = [], n_fill // len(encode(FILLER)) + 1
    while len(fill) < n_fill:  # BPE merges across repeats can make a repeat a token shorter
        fill, reps = encode(FILLER * reps), reps + 1
    cut = round(depth * n_fill)
    return [eot] + fill[:cut] + key_line + fill[cut:n_fill] + question + answer, len(answer)


def passkey_row(encode, eot, length, rng):
    """One training row for train.py's passkey mix: a random key at a random depth."""
    key = int(rng.integers(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS))
    return passkey_example(encode, eot, length, rng.random(), key)[0]


# -----------------------------------------------------------------------------
# integer addition

def addition_operand(rng, digits):
    """A uniform random integer of exactly `digits` digits (1..9 for one digit, as McLeish et al.);
    drawn digit by digit, so any length works (int64 holds 18 digits)."""
    return int(''.join(map(str, [rng.integers(1, 10), *rng.integers(0, 10, size=digits - 1)])))


def addition_text(a, b):
    """(prompt, answer): 'a+b=' and a+b, every number's digits reversed (least significant first)."""
    return f"{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1]


def addition_example(encode, eot, a, b):
    """(ids, n_answer): EOT, prompt, answer, EOT. The last n_answer tokens are the answer, its closing
    EOT included (so an answer that runs on is wrong). Characters are encoded one at a time, so the
    problem is character-level under any tokenizer."""
    prompt, answer = addition_text(a, b)
    chars = lambda s: [t for ch in s for t in encode(ch)]
    answer_ids = chars(answer) + [eot]
    return [eot] + chars(prompt) + answer_ids, len(answer_ids)


def addition_len(a_digits, b_digits):
    """Model input length (tokens) of the longest problem with operands of these lengths (one
    token per character): EOT a + b = c with c one digit longer than the longer operand."""
    return a_digits + b_digits + max(a_digits, b_digits) + 4


def addition_row(encode, eot, length, max_digits, rng):
    """(x, y), `length` tokens each, for train.py's addition task: one problem with operand lengths
    drawn from 1..max_digits independently, right-padded with EOT; y is -1 except on the answer."""
    a_digits, b_digits = rng.integers(1, max_digits + 1, size=2)
    ids, n = addition_example(encode, eot, addition_operand(rng, a_digits), addition_operand(rng, b_digits))
    pad = length + 1 - len(ids)
    if pad < 0:
        raise PromptTooLong(f"an addition problem with {max_digits}-digit operands needs {len(ids) - 1} tokens, more than {length}")
    return ids[:-1] + [eot] * pad, [-1] * (len(ids) - 1 - n) + ids[-n:] + [-1] * pad
