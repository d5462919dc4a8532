"""The traced user pass (:mod:`freshrec.serve.traced`) answers as the network's own pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from freshrec.model.sequence import SequenceNet
from freshrec.serve import traced
from freshrec.serve.scoring import Scoring
from freshrec.settings import ModelSettings


def scoring(net: SequenceNet, items: int) -> Scoring:
    """A scoring of ``net`` with a table of ``items`` rows (the pass reads nothing else)."""
    table = torch.randn(items, net.settings.dim, generator=torch.Generator().manual_seed(items))
    return Scoring(None, None, net, table, None, np.zeros(0, np.float32))  # type: ignore[arg-type]


def network(settings: ModelSettings, items: int, users: int, seed: int) -> SequenceNet:
    torch.manual_seed(seed)
    net = SequenceNet(items, torch.randn(items, 16), settings, n_users=users).eval()
    with torch.no_grad():
        for p in net.parameters():  # away from the initial values, which zero some parts
            p.add_(torch.randn_like(p) * 0.3)
    return net


def batch(items: int, users: int, lengths: list[int], width: int, seed: int) -> dict[str, torch.Tensor]:
    """Histories of ``lengths`` events (ratings, clicks and dislikes), ``width`` wide."""
    g = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    item = torch.full((rows, width), -1, dtype=torch.long)
    kind = torch.full((rows, width), -1, dtype=torch.long)
    value = torch.full((rows, width), float("nan"))
    at = torch.full((rows, width), float("nan"), dtype=torch.float64)
    for r, n in enumerate(lengths):
        if n:
            item[r, -n:] = torch.randint(0, items, (n,), generator=g)
            kind[r, -n:] = torch.randint(0, 3, (n,), generator=g)
            value[r, -n:] = torch.where(kind[r, -n:] == 0, torch.randint(1, 6, (n,), generator=g).float(), float("nan"))
            at[r, -n:] = torch.cumsum(torch.randint(1, 10_000, (n,), generator=g), 0).double()
    now = torch.full((rows,), 1e6, dtype=torch.float64)
    user = torch.randint(-1, users + 2, (rows,), generator=g)  # some unknown, some past the table
    return {"hist_item": item, "hist_type": kind, "hist_value": value, "hist_time": at, "time": now, "user": user}


def narrow(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``t`` cut to its longest history, as the eager pass was given it."""
    width = max(1, int((t["hist_item"] >= 0).sum(1).max()))
    return {k: v[:, -width:] if v.dim() == 2 else v for k, v in t.items()}


@pytest.mark.parametrize("user_ids", [False, True])
def test_the_traced_pass_answers_as_the_networks_own_for_every_network_of_its_shape(user_ids: bool) -> None:
    settings = ModelSettings(use_user_ids=user_ids)
    width = settings.history_length
    first = scoring(network(settings, 50, 20, seed=1), 50)
    # another network of the shape: more items and users, other tensors
    second = scoring(network(settings, 80, 45, seed=2), 80)
    with torch.inference_mode():
        for sc, seed in ((first, 3), (second, 4), (first, 5), (second, 6)):  # bound anew at each switch
            assert sc.net is not None and sc.vectors is not None
            items, users = len(sc.vectors), (sc.net.user_id.weight.shape[0] if sc.net.user_id is not None else 0)
            for lengths in ([width], [1], [3, width, 0, 7], list(range(1, 12))):
                t = batch(items, users, lengths, width, seed)
                got = traced.users(sc, t)  # type: ignore[arg-type]
                want = sc.net.users(sc.vectors, **narrow(t))
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    key = traced._key(first.net)  # type: ignore[arg-type]
    assert traced._graphs[key] is not None and traced._key(second.net) == key  # type: ignore[arg-type]


def test_a_network_refilled_for_a_newer_snapshot_is_bound_anew() -> None:
    settings = ModelSettings()
    net = network(settings, 40, 0, seed=7)
    old = scoring(net, 40)
    t = batch(40, 0, [5, 9], settings.history_length, seed=8)
    with torch.inference_mode():
        before = traced.users(old, t).clone()  # type: ignore[arg-type]
        newer = {name: tensor + 0.5 for name, tensor in network(settings, 40, 0, seed=9).state_dict().items()}
        net.load_state_dict(newer, strict=False, assign=True)  # as build_scoring refills a spare network
        refilled = dataclasses.replace(old)
        got = traced.users(refilled, t)  # type: ignore[arg-type]
        want = net.users(refilled.vectors, **t)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got.numpy(), before.numpy())


def test_a_history_narrower_than_the_networks_is_passed_to_the_network_itself() -> None:
    settings = ModelSettings()
    sc = scoring(network(settings, 30, 0, seed=10), 30)
    t = batch(30, 0, [2, 3], 3, seed=11)
    with torch.inference_mode():
        got = traced.users(sc, t)  # type: ignore[arg-type]
        want = sc.net.users(sc.vectors, **t)  # type: ignore[union-attr, arg-type]
    assert torch.equal(got, want)


def test_a_served_request_ranks_alike_with_the_traced_pass_and_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranker's requests go through the traced pass; with no graph, the eager one."""
    from freshrec.serve.catalog import Catalog
    from freshrec.serve.ranker import Options, Ranker
    from tests.serve.test_ranker import IDS, history, items, text, trained_snapshot

    _, snapshot = trained_snapshot()
    catalog = Catalog()
    catalog.put(items(), text(IDS))
    ranker = Ranker(catalog)
    ranker.publish(snapshot)
    asked = history("garden-0", "kitchen-1", "garden-3")
    with_graph = ranker.recommend(asked, 1e9, Options(k=5, explain=True))
    monkeypatch.setattr(traced, "_graphs", {traced._key(ranker.scoring.net): None})  # type: ignore[arg-type]
    eager = ranker.recommend(asked, 1e9, Options(k=5, explain=True))
    assert [r.item_id for r in with_graph] == [r.item_id for r in eager]
    np.testing.assert_allclose([r.score for r in with_graph], [r.score for r in eager], rtol=1e-5, atol=1e-5)
