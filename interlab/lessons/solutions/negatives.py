"""Solutions of the exercises of lesson negatives (filled in by `solutions=True`)."""

from __future__ import annotations


def hard_negatives(similarity, clusters, query_cluster, count):
    """Exercise 5.1: the `count` most similar entries outside the query's cluster, most similar first."""
    outside = similarity.masked_fill(clusters == query_cluster, float("-inf"))
    return outside.topk(count).indices


def semihard_pool(similarity, clusters, query_cluster, pool):
    """Exercise 5.2: the `pool` most similar entries outside the cluster (semi-hard draws from it)."""
    outside = similarity.masked_fill(clusters == query_cluster, float("-inf"))
    return outside.topk(pool).indices


def false_negative_share(classes, query, negatives):
    """Exercise 5.3: the share of negatives whose true class is the query's."""
    return (classes[negatives] == classes[query]).double().mean().item()
