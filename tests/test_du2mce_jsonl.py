"""User interests in the JSONL reader (DU2MCE issue item 6), on a fixture in the reader's layout."""

from pathlib import Path

import pytest

from mmsocial.data.corpus import Corpus, CorpusError
from mmsocial.data.jsonl import read_jsonl_corpus

FIX = Path(__file__).parent / "fixtures" / "jsonl_interests"


def test_interests_from_post_field_and_users_file(tmp_path):
    c = read_jsonl_corpus(FIX / "posts.jsonl", users_file=FIX / "users.jsonl")
    u = c.users.set_index("user_id")
    assert u.loc["ann", "interest"] == "shoes" and u.loc["bob", "interest"] == "fashion"
    assert u.loc["17", "interest"] == "hospitality"
    assert u.loc["bob", "name"] == "Bob"
    # the documented rule: a listed user with no post is kept with posts = 0 and counted
    assert u.loc["carol", "posts"] == 0 and u.loc["ann", "posts"] == 2
    assert c.meta["users_without_posts"] == 1
    c.save(tmp_path / "corpus")
    back = Corpus.load(tmp_path / "corpus")
    assert back.users.set_index("user_id").loc["carol", "interest"] == "shoes"


def test_interests_without_users_file():
    c = read_jsonl_corpus(FIX / "posts.jsonl")
    u = c.users.set_index("user_id")
    assert u.loc["ann", "interest"] == "shoes"
    assert u.loc["bob", "interest"] is None
    assert "posts" not in c.users.columns


def test_interest_on_a_post_without_author_is_an_error(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"post_id": "a", "user_id": "u", "text": "x"}\n{"post_id": "b", "text": "y", "user_interest": "shoes"}\n')
    with pytest.raises(CorpusError, match=r"p.jsonl line 2: field 'user_interest' is given but the post has no user_id"):
        read_jsonl_corpus(f)


def test_conflicting_interests_name_both_places(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"post_id": "a", "user_id": "u", "user_interest": "shoes"}\n'
                 '{"post_id": "b", "user_id": "u", "user_interest": "fashion"}\n')
    with pytest.raises(CorpusError, match=r"line 2: user 'u' has interest 'fashion' here but 'shoes' at .*line 1"):
        read_jsonl_corpus(f)
    users = tmp_path / "users.jsonl"
    users.write_text('{"user_id": "ann", "interest": "fashion"}\n')
    with pytest.raises(CorpusError, match=r"users.jsonl line 1: user 'ann' has interest 'fashion' here but 'shoes'"):
        read_jsonl_corpus(FIX / "posts.jsonl", users_file=users)


def test_bad_users_file(tmp_path):
    with pytest.raises(CorpusError, match="no such users file"):
        read_jsonl_corpus(FIX / "posts.jsonl", users_file=tmp_path / "missing.jsonl")
    bad = tmp_path / "users.jsonl"
    bad.write_text('{"user_id": "bob"}\n{"user_id": "bob"}\n')
    with pytest.raises(CorpusError, match="line 2: duplicate user_id 'bob'"):
        read_jsonl_corpus(FIX / "posts.jsonl", users_file=bad)
    bad.write_text('{"user_id": "bob", "interests": ["x"]}\n')
    with pytest.raises(CorpusError, match=r"unknown field\(s\) \['interests'\]"):
        read_jsonl_corpus(FIX / "posts.jsonl", users_file=bad)
