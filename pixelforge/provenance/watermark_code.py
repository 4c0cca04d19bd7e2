"""The watermark's channel code: the key's random streams, a rate-1/3 convolutional code with soft Viterbi
decoding, and the key-stream whitening of the coded bits.

The code is the constraint-length-7 code of LTE and 802.11 (generators 133, 171, 165 octal), zero-terminated:
PAYLOAD_BITS + 6 tail bits -> 3 coded bits each. It is written here with numpy because the Python libraries
that offer it (scikit-commpy, galois) are not dependencies of this project and bring far more than 60 lines;
`test_watermark.py` checks it against a brute-force maximum-likelihood decoder on a short message.
"""

from __future__ import annotations

import hashlib

import numpy as np

CONSTRAINT = 7  # the encoder remembers the last 6 bits
GENERATORS = (0o133, 0o171, 0o165)
TAIL = CONSTRAINT - 1
_STATES = 1 << TAIL


def key_rng(key: str, purpose: str) -> np.random.Generator:
    """A random stream derived from the key and what it is for (each purpose its own stream; nothing global)."""
    digest = hashlib.sha256(f"pixelforge-watermark\x00{purpose}\x00{key}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _parity(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    for shift in (4, 2, 1):
        x ^= x >> shift
    return x & 1


def _outputs() -> tuple[np.ndarray, np.ndarray]:
    """(next state, coded bits) for every (state, input bit): (64, 2) and (64, 2, 3). A state holds the last 6
    input bits, the newest in its top bit; the register is input bit followed by the state."""
    state = np.arange(_STATES)[:, None]
    bit = np.arange(2)[None, :]
    register = (bit << TAIL) | state  # (64, 2), 7 bits
    out = np.stack([_parity(register & g) for g in GENERATORS], axis=-1)
    return register >> 1, out


_NEXT, _OUT = _outputs()


def coded_length(n_bits: int) -> int:
    return len(GENERATORS) * (n_bits + TAIL)


def encode(bits: np.ndarray) -> np.ndarray:
    """(n,) bits in {0, 1} -> (3 (n + 6),) coded bits (the encoder ends in state 0)."""
    state, out = 0, []
    for b in np.concatenate([np.asarray(bits, dtype=np.int64), np.zeros(TAIL, np.int64)]):
        out.append(_OUT[state, b])
        state = _NEXT[state, b]
    return np.concatenate(out).astype(np.uint8)


def viterbi(soft: np.ndarray, n_bits: int) -> np.ndarray:
    """The maximum-likelihood message for soft coded values (positive: a 1 more likely, magnitude: confidence;
    shape (3 (n_bits + 6),)) -> (n_bits,) bits, by the Viterbi algorithm over the code's 64 states."""
    steps = n_bits + TAIL
    soft = np.asarray(soft, dtype=np.float64).reshape(steps, len(GENERATORS))
    # State d is entered with input bit d >> 5 from the two states whose upper five bits are d's lower five.
    dest = np.arange(_STATES)
    bit = dest >> (TAIL - 1)  # (64,)
    sources = ((dest & (_STATES // 2 - 1)) << 1)[:, None] | np.arange(2)[None, :]  # (64, 2)
    signs = 2.0 * _OUT[sources, bit[:, None]] - 1.0  # (64, 2, 3): the coded bits of each branch as +-1
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    back = np.zeros((steps, _STATES), dtype=np.int64)  # the survivor's previous state, per step and state
    for t in range(steps):
        branch = metric[sources] + signs @ soft[t]  # (64, 2) path metric through each of the two sources
        if t >= n_bits:
            branch[bit == 1] = -np.inf  # the tail feeds zeros
        pick = np.argmax(branch, axis=1)
        back[t] = sources[dest, pick]
        metric = branch[dest, pick]
    bits = np.zeros(steps, dtype=np.uint8)
    state = 0
    for t in range(steps - 1, -1, -1):
        bits[t] = state >> (TAIL - 1)
        state = back[t, state]
    return bits[:n_bits]


def bit_margins(soft: np.ndarray, n_bits: int) -> np.ndarray:
    """(n_bits,) for each message bit, how much better the best code word is than the best one with that bit
    the other way (max-log-MAP, the forward-backward pass over the same trellis as viterbi; positive where the
    bit is a 1). Its smallest magnitude is the decoded message's distance, in path metric, to the nearest code
    word that carries another message: a small one means a near miss (docs/watermark.md, "Payload check").
    Written here for the same reason as viterbi: the libraries that offer it are not dependencies."""
    steps = n_bits + TAIL
    soft = np.asarray(soft, dtype=np.float64).reshape(steps, len(GENERATORS))
    gamma = (2.0 * _OUT - 1.0) @ soft.T  # (64, 2, steps): each branch's metric at each step
    allowed = np.ones((steps, 2), bool)
    allowed[n_bits:, 1] = False  # the tail feeds zeros
    alpha = np.full((steps + 1, _STATES), -np.inf)  # the best metric of a path from the start to each state
    alpha[0, 0] = 0.0
    for t in range(steps):
        branch = np.where(allowed[t], alpha[t][:, None] + gamma[..., t], -np.inf)  # (64, 2)
        np.maximum.at(alpha[t + 1], _NEXT.ravel(), branch.ravel())
    beta = np.full((steps + 1, _STATES), -np.inf)  # the best metric of a path from each state to the end (state 0)
    beta[steps, 0] = 0.0
    margins = np.zeros(n_bits)
    for t in range(steps - 1, -1, -1):
        through = np.where(allowed[t], alpha[t][:, None] + gamma[..., t] + beta[t + 1][_NEXT], -np.inf)  # (64, 2)
        if t < n_bits:
            margins[t] = through[:, 1].max() - through[:, 0].max()
        beta[t] = np.where(allowed[t], gamma[..., t] + beta[t + 1][_NEXT], -np.inf).max(axis=1)
    return margins


def whitening(key: str, n: int) -> np.ndarray:
    """(n,) key-stream bits XORed onto the coded bits, so that a payload of mostly 0-bits (and a clean image,
    whose soft values lean towards one sign) does not look like a mark: every coded word is a key-dependent
    mix of 0s and 1s."""
    return key_rng(key, "whitening").integers(0, 2, n).astype(np.uint8)


def int_to_bits(value: int, n: int) -> np.ndarray:
    """An integer 0 <= value < 2**n -> (n,) bits, most significant first."""
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], dtype=np.uint8)


def bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value
