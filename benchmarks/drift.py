"""What makes a candidate index stop finding a model's top 10: two checkpoint versions compared.

    python benchmarks/drift.py --data /tmp/freshrec-scale --before 3 --after 5

On the data folder of a ``scale.py`` run (its store, catalog and checkpoints, with the
hashing encoder), builds the candidate index (:class:`~freshrec.serve.index.Index`) on the
served vectors of checkpoint version ``--before``, calibrated on 256 users' vectors under
that model, and measures the share of the exact top 10 that its shortlists and hits find
for 512 other users under version ``--after``, with 1, 1.5, 2 and 4 times the lists its
calibration chose and with every list:

- on the ``--before`` rows (what the calibration promised, on users it did not see);
- on the ``--after`` rows, as a server serving ``--after`` with the older index would;
- with an index built on the ``--after`` model's ID rows and biases but the ``--before``
  model's item tower: what a whole snapshot's new tower alone takes away;
- after the rows whose ID part moved most (10,000, 30,000, 100,000 of them, and all that
  changed), or those that moved further than the index's codes' typical error (what a
  server picks: it adds up each row's moves over the deltas in between, so it codes these
  rows and maybe more), are coded anew with their ``--after`` values in a copy of the index
  (:meth:`~freshrec.serve.index.Index.update`): what keeping the index current row by row
  gives back, and what it costs; and with the ``--before`` model's item tower, which the
  rows that did not move keep in the index.

The users are drawn at random from the log (the load's requests are random users'). Prints
its figures; RESULTS.md quotes them with the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import torch

from freshrec.encoders.base import encoder_key
from freshrec.learn.checkpoints import SUFFIX, Checkpoints
from freshrec.serve.catalog import Catalog
from freshrec.serve.exact import hits, top_rows
from freshrec.serve.index import Index
from freshrec.serve.ranker import Ranker
from freshrec.serve.scoring import Scoring, user_vectors
from freshrec.settings import EncoderSettings, RetrievalSettings, Settings
from freshrec.storage import open_store

Rows = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def served(settings: Settings, catalog: Catalog, version: int, scratch: Path) -> Scoring:
    """The serving copy of checkpoint ``version`` (linked into a folder of its own, where it is current)."""
    folder = scratch / f"version-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (SUFFIX, ".json"):
        name = f"model-{version:06d}{suffix}"
        if not (folder / name).exists():
            try:
                os.link(settings.data_dir / "checkpoints" / name, folder / name)
            except OSError:  # another file system
                shutil.copyfile(settings.data_dir / "checkpoints" / name, folder / name)
    (folder / "CURRENT").write_text(str(version))
    ranker = Ranker(catalog, RetrievalSettings(min_items=2**62))  # no index of its own
    ranker.publish(Checkpoints(folder, key=settings.cluster.key()).served(settings))
    return ranker.scoring


def line(index: Index, users: npt.NDArray[np.float32], rows: Rows) -> str:
    """The share of each user's exact top 10 under ``rows`` among the index's shortlist and
    hits, with 1, 1.5, 2 and 4 times the lists it probes and with every list."""
    best = top_rows(*rows, users)
    found = index._recall(best, users, hits(best, index.settings.candidates))
    base, lists = index.probes, index.index.nlist
    probes = sorted({min(p, lists) for p in (base, int(1.5 * base), 2 * base, 4 * base, lists)})
    return ", ".join(f"{p} lists {found(p):.3f}" for p in probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/freshrec-scale"))
    parser.add_argument("--before", type=int, required=True)
    parser.add_argument("--after", type=int, required=True)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/freshrec-drift"))
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    settings = Settings(data_dir=args.data, encoder=EncoderSettings(model="hashing"))
    store = open_store(settings.store_url)
    catalog = Catalog()
    catalog.load(store, encoder_key(settings.encoder))
    before, after = (served(settings, catalog, v, args.scratch) for v in (args.before, args.after))
    assert before.net is not None and after.net is not None and before.snapshot is not None

    rng = np.random.default_rng(0)
    picked = [e.user_id for o in rng.integers(0, store.last_offset(), 3_000) for e in store.read_events(int(o), 1)]
    users = list(dict.fromkeys(picked))[:768]
    length = before.snapshot.settings.history_length
    histories = [store.user_history(u, length) for u in users]
    now = max(e.timestamp for h in histories for e in h) + 60.0
    old_users, new_users = user_vectors(before, histories, now), user_vectors(after, histories, now)
    assert old_users is not None and new_users is not None
    calibration, others = slice(0, 256), slice(256, 768)

    with torch.no_grad():
        assert before.vectors is not None and before.bias is not None
        assert after.vectors is not None and after.bias is not None
        old: Rows = (before.vectors.numpy(), before.bias.numpy())
        new: Rows = (after.vectors.numpy(), after.bias.numpy())
        vectors, bias = after.net.item_table(text_part=before.net.text_part())
        old_tower: Rows = (vectors.numpy(), bias.numpy())
    tower = float(np.linalg.norm(new[0] - old_tower[0], axis=1).mean())
    ids = np.nonzero(np.any(old_tower[0] != old[0], axis=1) | (old_tower[1] != old[1]))[0]
    print(f"{len(old[0]):,} items; rows whose ID part changed: {len(ids):,}; mean move of a vector "
          f"{np.linalg.norm(new[0] - old[0], axis=1).mean():.3f} (the tower's part {tower:.3f}; mean length "
          f"{np.linalg.norm(old[0], axis=1).mean():.3f})")  # fmt: skip

    started = time.perf_counter()
    index = Index(*old, RetrievalSettings(), old_users[calibration])
    print(f"index on version {args.before}: {time.perf_counter() - started:.1f} s, {index.probes} of "
          f"{index.index.nlist} lists, recall {index.recall:.3f} on its 256 users")  # fmt: skip
    print(f"  version {args.before}'s users and rows: {line(index, old_users[others], old)}")
    print(f"  version {args.after}'s users and rows: {line(index, new_users[others], new)}")
    started = time.perf_counter()
    towered = Index(*old_tower, RetrievalSettings(), new_users[calibration])
    print(f"index on version {args.after}'s ID rows with version {args.before}'s tower "
          f"({time.perf_counter() - started:.1f} s, {towered.probes} lists):")  # fmt: skip
    print(f"  version {args.after}'s users and rows: {line(towered, new_users[others], new)}")
    moved = np.linalg.norm(np.hstack([old_tower[0] - old[0], (old_tower[1] - old[1])[:, None]]), axis=1)
    print("how far the changed rows' ID parts moved: p50 {:.4f}, p90 {:.4f}, p99 {:.4f}, most {:.4f}".format(
        *np.percentile(moved[ids], [50, 90, 99, 100])))  # fmt: skip
    first = index.index
    over = np.flatnonzero(moved > index.error)
    order = np.argsort(-moved, kind="stable")
    for most in (10_000, 30_000, 100_000, len(ids), -1):
        picked = over if most < 0 else order[: min(most, len(ids))]
        index.index = first  # each from the index as built: a server's searches go on in it meanwhile
        started = time.perf_counter()
        index.update(picked, new[0][picked], new[1][picked])
        took = time.perf_counter() - started
        what = (
            f"the {len(picked):,} rows that moved further than its codes' typical error ({index.error:.4f}), "
            "as a server picks them,"
            if most < 0
            else f"the {len(picked):,} rows that moved most"
        )
        print(f"index on version {args.before} with {what} coded anew ({took:.2f} s, one thread):")
        print(f"  version {args.after}'s users and rows: {line(index, new_users[others], new)}")
    print(f"with version {args.before}'s item tower, the index's own, the rows that moved further than:")
    for share in (1.0, 0.5, 0.25, 0.0):
        picked = np.flatnonzero(moved > share * index.error)
        index.index = first
        index.update(picked, old_tower[0][picked], old_tower[1][picked])
        print(f"  {share:g} times its codes' error ({len(picked):,} rows): {line(index, new_users[others], new)}")


if __name__ == "__main__":
    main()
