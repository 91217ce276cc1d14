"""NegativeExplorer on a live InterCLR bank: the right negatives per strategy, clear errors."""

import pytest
import torch

from interlab.lab.explore import NegativeExplorer
from interlab.lab.probes import query_embeddings
from tests.test_interclr import make_method


@pytest.fixture(scope="module")
def explorer(mixed_train):
    method = make_method(mixed_train)
    return NegativeExplorer(method, mixed_train.images, mixed_train.labels, shown=5)


def test_hard_negatives_are_the_nearest_outside_the_cluster(explorer):
    explorer.index.value = 37  # as the widget would
    found = explorer.current
    assert found["query"] == 37
    bank = explorer.method.memory
    query = query_embeddings(explorer.method, explorer.images[37:38])[0]
    outside = bank.labels != bank.labels[37]
    similarity = (bank.features @ query).masked_fill(~outside, float("-inf"))
    expected = similarity.topk(5).indices.tolist()
    hard = found["strategies"]["hard"]
    assert hard["indices"] == expected
    assert hard["cosines"] == pytest.approx(similarity[expected].tolist(), abs=1e-5)


def test_every_strategy_is_shown_with_false_negative_marks(explorer, mixed_train):
    explorer.index.value = 100
    labels = mixed_train.labels
    for strategy, drawn in explorer.current["strategies"].items():
        assert len(drawn["indices"]) == 5, strategy
        assert drawn["false"] == [bool(labels[i] == labels[100]) for i in drawn["indices"]]
        assert not any(
            explorer.method.memory.labels[i] == explorer.method.memory.labels[100]
            for i in drawn["indices"]
        )
    positive = explorer.current["positive"]
    assert (
        positive != 100
        and explorer.method.memory.labels[positive] == explorer.method.memory.labels[100]
    )
    assert "class" in explorer.message.value


def test_random_button_lands_where_the_seeded_generator_says(explorer):
    """Each click draws the next index from the explorer's own generator, shows that query,
    and over a few clicks the query moves (a button that kept or ignored the index fails)."""
    replay = torch.Generator()
    replay.set_state(explorer.generator.get_state())
    shown = []
    for _ in range(4):
        expected = int(torch.randint(512, (1,), generator=replay))
        explorer.random.click()  # as the widget's button would
        assert explorer.index.value == expected
        assert explorer.current["query"] == expected
        assert f"query {expected} " in explorer.message.value
        shown.append(expected)
    assert len(set(shown)) > 1


def test_out_of_range_index_is_a_message_not_a_traceback(explorer):
    with pytest.raises(ValueError, match="query index 600 is out of range \\[0, 512\\)"):
        explorer.negatives_for(600)
    explorer.index.max = 10_000  # bypass the widget's own bound to reach update()
    explorer.index.value = 600
    assert "out of range" in explorer.message.value


def test_pool_figure_reports_a_rate_per_strategy(explorer):
    fig, rates = explorer.pool_figure(queries=64)
    assert set(rates) == {"random", "hard", "semihard", "semieasy"}
    assert all(0 <= r <= 1 for r in rates.values())
    assert len(fig.axes[0].patches) > 0


def test_titles_and_messages_use_class_names(explorer, mixed_train):
    """`cat`, not `class 3`: the query's class name is in the message and under every tile."""
    names = [f"name{i}" for i in range(int(mixed_train.labels.max()) + 1)]
    explorer = NegativeExplorer(
        explorer.method, mixed_train.images, mixed_train.labels, shown=5, classes=names
    )
    explorer.update()
    query_class = names[int(mixed_train.labels[explorer.index.value])]
    assert f"({query_class})" in explorer.message.value
    fig = explorer.figure()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"query\n{query_class}"
    assert all(any(n in t for n in names) for t in titles)
    assert not any("class " in t for t in titles)
