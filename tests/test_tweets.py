import numpy as np
import pandas as pd
import pytest

from mmsocial.data.corpus import CorpusError
from mmsocial.data.tweets import find_data_dir, tweets_corpus


def _frame():
    """A few rows with the dtypes rdata gives the real ``trump_tweets`` (string, Int32, boolean, float)."""
    return pd.DataFrame({
        "source": pd.array(["Twitter Web Client", "Twitter for Android", "Twitter Web Client", None,
                            "Twitter for iPhone"], dtype="string"),
        "id_str": pd.array(["6971079756", "6312794445", "6090839867", "111", "222"], dtype="string"),
        "text": pd.array(["From Donald Trump: Wishing everyone a wonderful holiday",
                          "Trump International Tower in Chicago", "Wishing you and yours", "   ",
                          "RT @someone: hello"], dtype="string"),
        "created_at": [1261589898.0, 1261244137.0, 1259265338.0, 1300000000.0, 1400000000.0],
        "retweet_count": pd.array([28, 33, pd.NA, 0, 5], dtype="Int32"),
        "in_reply_to_user_id_str": pd.array([pd.NA, "123", pd.NA, pd.NA, pd.NA], dtype="string"),
        "favorite_count": pd.array([12, 6, 11, 0, 1], dtype="Int32"),
        "is_retweet": pd.array([False, False, False, False, True], dtype="boolean"),
    }, index=[1, 2, 3, 4, 5])


def test_tweets_frame_becomes_text_only_corpus_with_retweet_popularity():
    c = tweets_corpus(_frame())
    p = c.posts
    # the row without a retweet count and the retweet are dropped
    assert p["post_id"].tolist() == ["t6971079756", "t6312794445", "t111"]
    assert p["user_id"].tolist() == ["Twitter Web Client", "Twitter for Android", "unknown client"]
    assert p["image"].isna().all()
    assert p["text"].iloc[1] == "Trump International Tower in Chicago"
    assert p["text"].iloc[2] is None  # a blank tweet is a missing text, not ""
    assert p["views"].tolist() == [28.0, 33.0, 0.0] and p["days"].tolist() == [1.0, 1.0, 1.0]
    y = np.log2(p["views"] / p["days"] + 1)  # UHAN's target = log2(retweets + 1)
    np.testing.assert_allclose(y, np.log2([29, 34, 1]))
    assert p["timestamp"].tolist() == [1261589898.0, 1261244137.0, 1300000000.0]
    assert p["favorites"].tolist() == [12.0, 6.0, 0.0] and p["reply"].tolist() == [False, True, False]
    assert sorted(c.users["user_id"]) == ["Twitter Web Client", "Twitter for Android", "unknown client"]


def test_tweets_bad_frames_are_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="missing column"):
        tweets_corpus(_frame().drop(columns=["retweet_count"]))
    bad = _frame()
    bad.loc[1, "retweet_count"] = -3
    with pytest.raises(CorpusError, match="negative retweet_count"):
        tweets_corpus(bad)
    dup = _frame()
    dup.loc[2, "id_str"] = "6971079756"
    with pytest.raises(CorpusError, match="duplicate id_str"):
        tweets_corpus(dup)
    with pytest.raises(CorpusError, match="Rdata.rdx") as e:
        find_data_dir(tmp_path)
    assert str(tmp_path) in str(e.value) and "dpkg-deb" in str(e.value)
