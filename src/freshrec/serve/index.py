"""The candidate index: an inverted file of 4-bit codes over the served item vectors,
calibrated on requests (:class:`Index`); :mod:`freshrec.serve.retrieval` keeps one
built and checked in the background.

Why: every request used to score the whole catalog, which at 200,000 items took
17 ms alone. A user's score for an item is ``user . vector + bias``; written as
the inner product of ``[user, 1]`` and ``[vector, bias]`` it is a maximum
inner-product search, which an inverted-file index (faiss) answers in a fraction
of a millisecond. Its candidates are scored exactly with the current snapshot, so
an index built from older vectors costs recall, never a wrong score.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import faiss
import numpy as np
import numpy.typing as npt

from freshrec.serve.clustering import Trained, padded_rows, recode
from freshrec.serve.exact import hits, top_rows
from freshrec.settings import RetrievalSettings

log = logging.getLogger(__name__)

SHORTLIST = 4
"""A search returns up to this many times the candidates it is asked for, ranked by the
codes' approximate scores, and all of them are scored exactly: the codes misjudge close
calls. On the million-item shop's model right after its warm start, every list probed found
0.986 of the exact top 10 among 230 rows, 0.997 among 1,000 (0.996 with 512 lists probed,
1.1 ms a search; scoring 1,000 rows exactly costs about 0.1 ms). Each calibration keeps the
shortest shortlist (1 to this many times the candidates) that finds as much
(:meth:`Index._calibrate`)."""
SLACK = 0.002
"""How much recall a calibration gives up, where the target is out of reach, to probe fewer lists."""
REPROBE = 1.5
"""An index whose check finds less than it was calibrated to may probe up to this many
times the lists its calibration chose before it is built anew (:meth:`Index.holds`). Why:
a million items' build costs a core for 20-35 s beside the requests (p99 52.0 and 284.2 ms
in the round it ran, on the million-item shop under load); every extra list costs each
search its scan (0.2 ms a search of 4 users at 64 lists, 0.45 at 256)."""


ERROR_SAMPLE = 2_000
"""Rows whose codes measure the codes' typical error (:attr:`Index.error`)."""


class Index:
    """An inverted-file index of 4-bit codes (faiss ``IndexIVFPQFastScan``) over rows
    ``0 .. n - 1`` of one scoring, with its number of probed lists calibrated on recent
    requests.

    Maximum inner product, searched as such: item ``[vector, bias]``, query ``[user, 1]``,
    faiss's inner-product inverted file. The items are clustered by k-means into about
    ``4 sqrt(n)`` lists; a search scans the lists whose centres have the largest inner
    product with the query.

    Why not the reduction to nearest neighbours (Bachrach et al., 2014: item ``[vector,
    bias, sqrt(M^2 - |vector|^2 - bias^2)]``, query ``[user, 1, 0]``, lists by Euclidean
    distance), which this replaced: it needed twice the lists for the same recall. On the
    million-item shop's model after minutes of its own events (500 random users' requests,
    the hits of 256 others as candidates too, 920 rows a shortlist), 256 lists found 0.9738
    of the exact top 10 reduced and 0.9898 as inner products, 512 lists 0.9920 and 0.9978,
    at the same cost a list (0.46 and 0.43 ms a request at 256, batched by 8, one thread).

    Why codes, not the vectors (``IndexIVFFlat`` before): a model that learned minutes of
    random clicks has vectors with no clusters, and finding 0.99 of its top 10 took a third
    to half of the lists of a million items, 6-15 ms a search: more than a request's share
    of a core at 200 requests/s, and the server fell behind. Each dimension's residual
    from its list's centre as a 4-bit code (one byte per two dimensions: 33 MB for a
    million items against 264 MB), compared sixteen at a time by SIMD table look-ups, is
    scanned 6-8 times as fast (a million vectors in 64 dimensions around 2,000 centres:
    1,024 lists 1.3 against 8.0 ms, every list 3.9 against 29.4 ms) and finds about as
    much (recall@10 in 200 candidates 0.917 against 0.923, 0.998 against 1.0); the
    candidates are scored exactly afterwards, so the codes' error costs recall, never a
    wrong score.

    Why not a graph (HNSW, which this replaced): on trained models some items were
    unreachable in the graph, whatever the search breadth: recall@10 of 0.84 on a
    25,000-item shop's trained model with 200 candidates (0.99 on the inner-product
    metric there, but 0.987 on MovieLens-100K, where the reduced one found 0.9998). An
    inverted file has no unreachable items: recall rises smoothly with the lists probed,
    so it can be calibrated, and it builds in a fraction of the time (a million items in
    under a minute against minutes).

    Calibration: given recent requests' user vectors, the build scores them exactly
    against every item and takes the fewest probes whose candidates hold at least
    ``target_recall`` of the exact top 10 (``recall`` is what it measured)."""

    def __init__(
        self,
        vectors: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        settings: RetrievalSettings,
        queries: npt.NDArray[np.float32] | None = None,
        recent: deque[npt.NDArray[np.float32]] | None = None,
        trained: Trained | None = None,
        stand_in: bool = False,
    ):
        """``queries``: user vectors to calibrate on; ``recent``: where searches leave
        their user vectors (the next build calibrates on them); ``trained``: an earlier
        build's clustering, reused if it :meth:`~Trained.fits`; ``stand_in``: the queries
        stand in for requests not there yet (stored users'), and the first check on
        requests calibrates it again (:meth:`holds`)."""
        started = time.perf_counter()
        self.recent = recent
        rows = padded_rows(vectors, bias)
        self.n, self.settings, self.dims = len(rows), settings, rows.shape[1]
        lists = max(1, min(int(4 * np.sqrt(self.n)), self.n // 39))  # faiss wants 39 points per centre
        if trained is None or not trained.fits(self.dims, lists):
            trained = Trained.on(rows, lists)
        self.trained = trained
        self.index = cast(faiss.IndexIVFPQFastScan, faiss.clone_index(trained.index))
        self.index.add(rows)
        self.index.nprobe = min(settings.probes, lists)
        sample = rows[np.random.default_rng(1).choice(self.n, min(self.n, ERROR_SAMPLE), replace=False)]
        decoded = self.index.sa_decode(self.index.sa_encode(sample))
        self.error = float(np.median(np.linalg.norm(decoded - sample, axis=1)))
        """How far a row's code is from the row, typically (the median over a sample of
        rows): a row that moved less since it was coded is as current as a code can be
        (:meth:`update`)."""
        self.updated = 0
        """Rows coded anew since the build (:meth:`update`)."""
        self.factor = SHORTLIST
        """Rows a search returns per candidate asked for (:data:`SHORTLIST`, or fewer where
        the calibration found as much with fewer)."""
        self._head = self._head_of(np.zeros(0, dtype=np.int64))
        self.recall = float("nan")
        """Share of the exact top 10 among the candidates, on the calibration's requests (or
        the latest :meth:`holds` check's)."""
        if queries is not None and len(queries):
            self._calibrate(vectors, bias, queries)
        self.calibrated = self.recall
        """What the calibration measured."""
        self.calibrated_probes = self.probes
        """The lists its calibration chose to probe (:meth:`holds` may probe more)."""
        self.stand_in = stand_in
        """Whether it was calibrated on stand-ins for requests (until a check on requests)."""
        self.checked = (self.recall, self.probes)
        """What the latest :meth:`holds` found, and with how many lists (its calibration's at first)."""
        self.built_at = time.monotonic()
        """When it was built or last found to hold (:meth:`holds`)."""
        self.build_s = time.perf_counter() - started

    def update(
        self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
    ) -> None:
        """Code ``rows`` anew from their served ``vectors`` and ``bias``, in a copy of the
        index that then replaces it: a search running meanwhile reads either, never half of
        one (called from the build's thread alone, as :meth:`holds` is).

        Why: the learner's sparse steps move the ID rows of every item they touch, sampled
        negatives included (on the million-item shop, 341,637 items' rows in 73,480 events,
        moves p50 0.068, p90 0.307, p99 1.057), and an index built 150 s earlier found 0.464
        of the exact top 10 with every list probed; with only the newer model's item tower
        missing, 0.997 (``benchmarks/drift.py``). A copy of the index takes 0.01-0.03 s and
        coding a row anew about 10-30 µs, one thread, where a build takes 20-55 s. The rows
        keep their lists' centres: the clustering ages as before, which the checks
        (:meth:`holds`) measure."""
        clone = cast(faiss.IndexIVFPQFastScan, faiss.clone_index(self.index))
        clone.nprobe = self.index.nprobe
        recode(clone, np.ascontiguousarray(rows, dtype=np.int64), padded_rows(vectors, bias))
        self.index, self.updated = clone, self.updated + len(rows)

    @property
    def probes(self) -> int:
        return int(self.index.nprobe)

    @property
    def head(self) -> npt.NDArray[np.int64]:
        """Rows that are candidates for every request, ascending: the calibration's hits
        (:meth:`_calibrate`, :meth:`holds`)."""
        return self._head[0]

    def _head_of(self, head: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """``head`` and a mask of its rows: replaced as one value while requests read it."""
        member = np.zeros(self.n, dtype=bool)
        member[head] = True
        return head, member

    def with_head(self, found: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The rows of ``found`` (distinct, none negative) and the :attr:`head`, ascending.

        Why not ``np.union1d``: it sorts both and drops the duplicates in five NumPy calls,
        0.17 ms a request of 1,000 rows and 200 hits on the million-item shop (9% of a
        request's ranking); a mask of the hits leaves one sort of the rows that remain."""
        head, member = self._head
        rows = np.concatenate([head, found[~member[found]]])
        rows.sort()
        return rows

    @property
    def scanned(self) -> float:
        """The share of the lists a search scans."""
        return self.probes / self.index.nlist

    def shortlist(self, k: int, excluded: int = 0) -> int:
        """How many rows a search for ``k`` candidates returns for a request that excludes
        ``excluded`` items: :attr:`factor` times ``k``, plus ``excluded``.

        Why not that many times the exclusions too: excluded rows can take at most
        ``excluded`` places of a shortlist, so one of ``factor * k + excluded`` rows holds
        at least the ``factor * k`` best by their codes that the request may get, which is
        what the calibration measured. A user's seen items (up to 500) used to be
        multiplied too: a shortlist of 2,000-3,000 rows where 1,000 do, each searched,
        merged and scored exactly."""
        return min(self.factor * k + excluded, self.n)

    def search(self, users: npt.NDArray[np.float32], k: int, excluded: int = 0) -> npt.NDArray[np.int64]:
        """``(len(users), shortlist(k, excluded))`` rows with the highest scores by their
        codes for each user, best first (``-1``: none); the users are kept in ``recent`` for
        the next build's calibration."""
        if self.recent is not None:
            self.recent.extend(users)
        return self._search(users, self.shortlist(k, excluded))

    def _search(self, users: npt.NDArray[np.float32], rows: int, probes: int | None = None) -> npt.NDArray[np.int64]:
        queries = np.zeros((len(users), self.dims), np.float32)
        queries[:, : users.shape[1]], queries[:, users.shape[1]] = users, 1.0
        params = None
        if probes is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = probes
        _, found = self.index.search(queries, rows, params=params)
        return np.asarray(found, dtype=np.int64)

    def holds(
        self,
        vectors: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        users: npt.NDArray[np.float32],
        current: bool = False,
    ) -> bool:
        """Whether this index still finds what it was calibrated to for ``users`` (recent
        requests' vectors) whose exact top 10 is taken by ``vectors`` and ``bias``, a newer
        snapshot's: ``target_recall``, or within :data:`SLACK` of its calibration's recall
        where that fell short; probing more lists if need be, up to :data:`REPROBE` times
        the calibration's, with the shortlist (up to :data:`SHORTLIST` times the candidates)
        that needs the fewest; as many lists as it takes where it was calibrated on :attr:`stand_in`
        users (the check calibrates it) or is ``current`` (its rows coded as the served ones
        are, with the item tower it was built with, its clustering one a build would reuse).
        If it holds, it takes what it found (:meth:`_take`) and counts as built now.

        Why: a million items' build costs 20-55 s of a core beside the requests; scoring a
        few hundred requests exactly against every item and searching them a few times
        costs a tenth of it. A model whose vectors drifted apart fails and gets its build.
        Why the fewest lists, not the shortest shortlist: a search costs the lists it scans
        (a row more a candidate, a fraction of a microsecond); under random users' clicks on
        the million-item shop, checks kept one row a candidate and probed 2,160 of 4,000 lists.
        Where the index is ``current`` a build would make the same index (rows coded anew
        score as a new index's with the same clustering, :meth:`update`) and calibrate it
        as the check does: under the million-item shop's random load, a check found 0.821
        with 450 lists and asked for a build (28.2 s), which probed 1,920 lists on the same
        clustering. The check is made after the rows that
        moved since the last step are coded anew (:meth:`~freshrec.serve.retrieval.Retrieval.refresh`):
        measured before, in three runs of the million-item shop, 2.5 minutes after the
        build, every list found 0.909-0.972 of the top 10 and the index was built again;
        measured after, 277 lists found 0.988 and it was kept. Why requests set a first
        index's probes: calibrated on the latest stored users, it probed 240 and 256 lists,
        and the builds again under random users' requests 352 and 416."""
        best = top_rows(vectors[: self.n], bias[: self.n], users)
        head = hits(best, self.settings.candidates)
        target = min(self.settings.target_recall, self.calibrated - SLACK)
        bounds = [min(self.index.nlist, max(self.calibrated_probes + 1, int(REPROBE * self.calibrated_probes)))]
        if self.stand_in or current:
            bounds.append(self.index.nlist)
        self.checked = (0.0, self.probes)
        recalls = {factor: self._recall(best, users, head, factor) for factor in range(self.factor, SHORTLIST + 1)}
        for most in bounds:  # the lowest bound first; within it the fewest lists, then the shortest shortlist
            reach: dict[int, int] = {}
            for factor, recall in recalls.items():
                probes = self.probes if recall(self.probes) >= target else _fewest(recall, target, most, self.probes)
                if recall(probes) >= self.checked[0]:  # the best it found, with the most it tried
                    self.checked = (recall(probes), probes)
                if recall(probes) >= target:
                    reach[factor] = probes
                    if probes == self.probes:  # no shortlist probes fewer
                        break
            if reach:
                factor = min(reach, key=lambda f: (reach[f], f))
                self._take(head, recalls[factor](reach[factor]), reach[factor], factor)
                return True
        return False

    def _take(self, head: npt.NDArray[np.int64], recall: float, probes: int, factor: int) -> None:
        """What a check that holds found becomes the index's: its hits, recall, probes and
        shortlist (as its calibration, where it probes past :data:`REPROBE`, was calibrated
        on stand-ins or needs a longer shortlist); it counts as built now."""
        self._head, self.recall, self.built_at = self._head_of(head), recall, time.monotonic()
        self.index.nprobe = probes  # searches running now read either; both are sound
        if self.stand_in or probes > self.calibrated_probes * REPROBE or factor != self.factor:
            self.calibrated, self.calibrated_probes, self.stand_in = recall, probes, False
        self.factor = factor

    def _found(
        self,
        best: npt.NDArray[np.int64],
        users: npt.NDArray[np.float32],
        head: npt.NDArray[np.int64],
        probes: int,
        factor: int | None = None,
    ) -> float:
        """The share of ``best`` (each user's exact top 10) among the user's shortlist (``factor``
        times the candidates; default :attr:`factor`) and ``head``, searched with ``probes`` lists
        (the index untouched: the server searches it); in whole arrays: a loop over the users
        held the interpreter lock the requests need."""
        shortlists = self._search(users, min((factor or self.factor) * self.settings.candidates, self.n), probes)
        return float(((best[:, :, None] == shortlists[:, None, :]).any(axis=2) | np.isin(best, head)).mean())

    def _recall(
        self,
        best: npt.NDArray[np.int64],
        users: npt.NDArray[np.float32],
        head: npt.NDArray[np.int64],
        factor: int | None = None,
    ) -> Callable[[int], float]:
        """:meth:`_found` as a function of the probes, each measured once (:func:`_fewest` asks again)."""
        return functools.cache(lambda probes: self._found(best, users, head, probes, factor))

    def _calibrate(
        self, vectors: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], users: npt.NDArray[np.float32]
    ) -> None:
        """The fewest probes whose shortlists of ``candidates`` hold ``target_recall`` of the
        requests' exact top 10, on average: doubled from 4 lists until they do, then
        narrowed down by three halvings of the last step (within an eighth of it: on a
        million items' trained model, 512 probes found 0.990 and 1,000 were probed, each
        search twice as long as needed); every list at most (scanning the codes of all
        costs a fraction of scoring every item: vectors without clusters, as random ones,
        need them all; the million-item model after 100,000 events learned online needed
        2,000 of 4,000 lists for 0.989).

        Where even every list falls short (the codes' error), the fewest probes that find
        within :data:`SLACK` of what every list finds: on the million-item shop's model
        right after its warm start, with 230 rows a shortlist, every list found 0.986 of
        the top 10 and the first calibrated build probed all 4,000 of them, for 0.0008
        more than 1,024 found; requests took a whole core and queued (p50 138-381 ms).

        Then the shortest shortlist, 1 to :data:`SHORTLIST` times the candidates, that
        finds as much with those probes: where the lists probed, not the
        codes, limit what is found, the rows past the first ones add nothing. On the
        million-item shop's model after its warm start, 256 of 4,000 lists found 0.9902 of
        the top 10 of 256 requests with 400, 800, 1,600 or 3,200 rows a shortlist alike
        (a search of 4 users 0.41 ms at 400 rows, 0.45 at 800), and every row costs its
        share of the merge with the hits and the exact scores."""
        best = top_rows(vectors, bias, users)
        self._head = self._head_of(hits(best, self.settings.candidates))
        recall = self._recall(best, users, self.head)

        most = self.index.nlist
        probes = _fewest(recall, self.settings.target_recall, most)
        if recall(probes) < self.settings.target_recall:
            probes = _fewest(recall, recall(most) - SLACK, most)
            log.warning(
                "the candidate index finds %.4f of the exact top 10 with every list probed and %.4f with the "
                "%d of %d it probes (target_recall %.3f)", recall(most), recall(probes), probes, most,
                self.settings.target_recall,
            )  # fmt: skip
        self.index.nprobe, self.recall = probes, recall(probes)
        for factor in range(1, SHORTLIST):
            self.factor = factor
            if self._found(best, users, self.head, probes) >= self.recall:
                return
        self.factor = SHORTLIST


def _fewest(recall: Callable[[int], float], target: float, most: int, below: int = 0) -> int:
    """The fewest probes (up to ``most``) whose ``recall`` reaches ``target``, or ``most``:
    doubled from 4 (or from twice ``below``, known to fall short) until it does, then three
    halvings of the last step."""
    probes = min(max(4, 2 * below), most)
    while recall(probes) < target and probes < most:
        below, probes = probes, min(probes * 2, most)
    for _ in range(3 if recall(probes) >= target else 0):
        middle = (below + probes) // 2
        if middle <= below:
            break
        if recall(middle) >= target:
            probes = middle
        else:
            below = middle
    return probes


def search_threads(n: int) -> None:
    """``n`` OpenMP threads for the index's searches made from the calling thread (the
    server's model thread, :mod:`freshrec.serve.batching`; faiss keeps the setting per
    thread, and a build's thread sets its own, :meth:`Retrieval._build
    <freshrec.serve.retrieval.Retrieval._build>`).

    Why: faiss's OpenMP takes every core by default and waits for the slowest of its
    threads; with the learner busy on the other core a search of 4 users (300 of 2,000
    lists, 300,000 items) took p99 10.0 ms on two threads against 2.3-2.5 ms on one, and
    two threads used three times the processor time (their spinning)."""
    faiss.omp_set_num_threads(n)
