"""errors.quote: the bounded repr every error message uses for a value it was given."""

import yaml

from hf_sparse.errors import quote


def test_short_values_quote_as_repr():
    for value in ("name", 3, 2.5, None, True, [1, 2], (2, 4), {"k": "v"}, "it's"):
        assert quote(value) == repr(value)


def test_huge_and_deep_values_quote_within_the_limit_without_a_full_repr():
    # Nine levels of ten aliases: 10**9 leaves if expanded; repr() of it would never finish.
    text = "a0: &a0 [xxxxxxxxxx]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10)
    )
    bomb = yaml.safe_load(text)["a9"]
    deep: list = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    for value in (bomb, deep, "y" * 10**7, 10**5000, -(10**5000), b"z" * 10**6, {i: i for i in range(10**5)}):
        text = quote(value)
        assert 0 < len(text) <= 160
    assert quote(10**5000) == "<int of about 5001 digits>"
    assert len(quote("y" * 1000, limit=40)) == 40


def test_a_broken_repr_does_not_hide_the_error():
    class Broken:
        def __repr__(self):
            raise RuntimeError("no")

    assert quote(Broken()).startswith("<Broken")
