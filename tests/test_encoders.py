"""The sentence encoder batches distinct texts by length; the vectors must be those of one text at a time."""

import numpy as np

from rbr_rlhf.encoders import MeanPoolEncoder


def test_length_sorted_batches_give_the_vectors_of_single_texts():
    enc = MeanPoolEncoder("minilm", max_length=64, batch_size=3)
    texts = ["I'm sorry, but I can't help with that.", "Yes.",
             "Here is a long answer about pasta: boil water, add salt, cook for nine minutes, drain and serve. " * 3,
             "Yes.", "", "I'm sorry, but I can't help with that.", "Call a helpline now."]
    batched = enc.encode(texts)
    single = np.concatenate([enc.encode([t]) for t in texts])
    assert batched.shape == (len(texts), 384)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.allclose(batched[1], batched[3]) and not np.allclose(batched[0], batched[1])
    assert enc.encode([]).shape == (0, 384)


def test_left_truncation_keeps_the_end():
    enc = MeanPoolEncoder("minilm", max_length=8)
    long = "alpha " * 50 + "the final words matter"
    right, left = enc.encode([long]), enc.encode([long], truncation_side="left")
    assert not np.allclose(right, left)
    np.testing.assert_allclose(left, enc.encode(["alpha alpha the final words matter"], truncation_side="left"), atol=1e-5)


def test_length_batches_respect_row_and_token_limits():
    from rbr_rlhf.encoders import length_batches

    lengths = [5, 1, 9, 3, 3, 7]
    batches = length_batches(lengths, max_rows=2)
    assert batches == [[1, 3], [4, 0], [5, 2]]
    batches = length_batches(lengths, max_rows=4, max_tokens=12)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 12 or len(b) == 1 for b in batches)
