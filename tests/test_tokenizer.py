"""Tokenizer: BPE training, tiktoken wrapping, special tokens, useful lengths.
python -m pytest -q tests/test_tokenizer.py"""

import pytest
import torch

from mini_dlm.tokenizer import EOT, MASK, MIN_VOCAB, Tokenizer, train_bpe, useful_lengths


def test_round_trip_text_and_non_ascii(tokenizer, corpus):
    for text in [corpus[:5000], "héllo wörld, ½ naïve café", "日本語のテキスト 🙂 emoji", "  spaces\n\ttabs\r\n", ""]:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size - 2 for i in ids)  # plain text never yields specials
        assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer):
    text = f"ROMEO:{EOT}JULIET{MASK}!"
    ids = tokenizer.encode(text, allow_special=True)
    assert ids.count(tokenizer.eot_id) == 1 and ids.count(tokenizer.mask_id) == 1
    assert tokenizer.decode(ids) == text
    # by default the strings are ordinary text: a prompt cannot inject a mask token
    plain = tokenizer.encode(text)
    assert tokenizer.eot_id not in plain and tokenizer.mask_id not in plain
    assert tokenizer.decode(plain) == text
    assert (tokenizer.eot_id, tokenizer.mask_id) == (tokenizer.vocab_size - 2, tokenizer.vocab_size - 1)


def test_vocab_size_and_compression(corpus, tokenizer):
    tok = Tokenizer.train(corpus, 400)
    assert tok.vocab_size == 400 and tokenizer.vocab_size == 320
    # merges compress the text, and more merges compress it more
    assert len(tok.encode(corpus)) < len(tokenizer.encode(corpus)) < 0.7 * len(corpus.encode())
    # every learned token is the concatenation of two earlier ones
    for n, (a, b) in enumerate(tok.merges):
        assert a < 256 + n and b < 256 + n


def test_training_is_deterministic_and_prefers_frequent_pairs():
    text = "aaab " * 50 + "cd " * 3
    merges = train_bpe(text, MIN_VOCAB + 2)
    assert merges == train_bpe(text, MIN_VOCAB + 2)
    assert merges[0] == (ord("a"), ord("a"))  # "aa" occurs 100 times, more than any other pair


def test_save_load_round_trip(tokenizer, corpus):
    tok2 = Tokenizer.from_dict(tokenizer.to_dict())
    assert tok2.fingerprint() == tokenizer.fingerprint()
    assert tok2.encode(corpus[:2000]) == tokenizer.encode(corpus[:2000])


def test_too_small_vocab_is_an_error(corpus):
    with pytest.raises(ValueError, match="at least 258"):
        Tokenizer.train(corpus, 100)


def test_gpt2_option_works_or_says_why():
    """With tiktoken's GPT-2 files (network or cache) the option works; without, one clear error."""
    try:
        tok = Tokenizer("gpt2")
    except ValueError as e:
        assert "needs the network or a cached copy" in str(e)
        return
    assert (tok.eot_id, tok.mask_id, tok.vocab_size) == (50256, 50257, 50258)  # GPT-2's own EOT id
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_useful_lengths():
    E = 7
    gen = torch.tensor([[1, 2, 3, 4], [E, 1, 2, 3], [1, E, E, 2], [1, 2, 3, E]])
    assert useful_lengths(gen, E).tolist() == [4, 0, 1, 3]
    assert useful_lengths(torch.zeros(2, 0, dtype=torch.long), E).tolist() == [0, 0]


def test_a_text_too_small_for_the_vocabulary_is_refused():
    """Tokenizer.train gives exactly vocab_size ids (the model's embedding is built for them), or
    says how many the text yields."""
    with pytest.raises(ValueError, match=r"yields only 26\d token ids, not the 2048 of --vocab-size"):
        Tokenizer.train("to be or not to be", 2048)
    assert Tokenizer.train("to be or not to be", MIN_VOCAB + 2).vocab_size == MIN_VOCAB + 2
