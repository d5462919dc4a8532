"""States round-trip as safetensors and JSON; pickles, tampered or unsigned blobs and
snapshots of the wrong shape are refused, and refusing them runs no code."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec import serialization
from freshrec.learn.checkpoints import Checkpoints
from freshrec.model.sequence import SequenceNet
from freshrec.model.snapshot import Snapshot
from freshrec.serialization import Malformed
from freshrec.settings import ModelSettings

KEY = b"a-shared-secret"


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def nested_state() -> dict[object, object]:
    shared = torch.arange(3.0)
    return {
        "t": shared,
        "same": shared,  # one tensor twice, and a view of all of it: safetensors refuses shared memory
        "reshaped": shared.view(3, 1),
        "view": torch.arange(6).reshape(2, 3)[:, 1],  # not contiguous, shares storage
        "a": np.arange(4, dtype=np.int64),
        "mask": np.array([True, False]),
        "f64": np.array([0.5, np.inf]),
        "s": ["x", None, {"deep": (1, 2.5, "z")}],
        "n": float("nan"),
        "big": 2**127 + 3,  # a NumPy PCG64 state holds 128-bit integers
        3: "an int key",  # an optimizer's state is keyed by parameter number
        "np": np.float32(1.5),
    }


def test_nested_states_round_trip() -> None:
    state = nested_state()
    loaded = serialization.loads(serialization.dumps(state))
    assert set(loaded) == set(state)
    assert torch.equal(loaded["t"], state["t"]) and torch.equal(loaded["view"], torch.tensor([1, 4]))
    assert torch.equal(loaded["same"], state["t"]) and loaded["reshaped"].shape == (3, 1)
    assert isinstance(loaded["a"], np.ndarray) and np.array_equal(loaded["a"], state["a"])
    assert loaded["mask"].dtype == np.bool_ and loaded["f64"].dtype == np.float64 and loaded["f64"][1] == np.inf
    assert loaded["s"] == ["x", None, {"deep": (1, 2.5, "z")}]
    assert np.isnan(loaded["n"]) and loaded["big"] == 2**127 + 3 and loaded[3] == "an int key"
    assert loaded["np"] == 1.5


def test_a_large_table_of_mostly_zero_rows_is_saved_as_its_nonzero_rows() -> None:
    table = torch.zeros(20_000, 64)
    table[[3, 17, 19_999]] = torch.randn(3, 64)
    dense = torch.randn(2_000, 8)  # most rows nonzero: saved whole
    blob = serialization.dumps({"table": table, "dense": dense, "bias": table[:, :1]})
    assert len(blob) < dense.nbytes + 10_000  # the sparse ones take ~1 kB each, not 5 MB and 80 kB
    loaded = serialization.loads(blob)
    assert torch.equal(loaded["table"], table) and torch.equal(loaded["dense"], dense)
    assert torch.equal(loaded["bias"], table[:, :1]) and loaded["bias"].shape == (20_000, 1)


def test_a_crafted_sparse_table_is_refused_before_it_is_built() -> None:
    from safetensors.torch import save

    rows, values = torch.tensor([5, 2]), torch.zeros(2, 4)
    for shape, reason in (([10, 4], "ascend"), ([10**12, 4], "larger"), ([10, 3], "fit"), ("x", "shape")):
        skeleton = {"$rows": ["t0", "t1", shape]}
        body = save({"t0": rows, "t1": values}, metadata={"freshrec": json.dumps(skeleton)})
        with pytest.raises(Malformed, match=reason):
            serialization.loads(b"FRESHREC/1 unsigned\n" + body)


def test_what_cannot_be_saved_is_refused_on_saving() -> None:
    with pytest.raises(TypeError, match="NumPy array of dtype"):
        serialization.dumps({"ids": np.array(["a", "b"], dtype=object)})
    with pytest.raises(TypeError, match="cannot save a Payload"):
        serialization.dumps({"x": Payload(Path("never"))})


def test_signatures_are_required_and_checked_when_a_key_is_set() -> None:
    signed, unsigned = serialization.dumps({"x": 1}, KEY), serialization.dumps({"x": 1})
    assert serialization.loads(signed, KEY) == {"x": 1}
    assert serialization.loads(signed) == {"x": 1}  # no key configured: the signature is not needed
    with pytest.raises(Malformed, match="not signed"):
        serialization.loads(unsigned, KEY)
    with pytest.raises(Malformed, match="does not match"):
        serialization.loads(signed, b"another key")
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    with pytest.raises(Malformed, match="does not match"):
        serialization.loads(bytes(tampered), KEY)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"FRESHREC/1 unsigned",
        b"FRESHREC/1 unsigned\n\x00\x00",
        b"FRESHREC/1 unsigned\n" + (10**9).to_bytes(8, "little") + b"{}",
        b"FRESHREC/2 unsigned\n{}",
    ],
)
def test_truncated_or_foreign_bytes_are_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        serialization.loads(data)


def test_a_skeleton_with_unknown_tags_or_dangling_references_is_refused() -> None:
    from safetensors.torch import save

    for skeleton in ({"$tensor": "t9"}, {"$object": "os.system"}, {"$dict": [[1]]}):
        body = save({"t0": torch.zeros(1)}, metadata={"freshrec": json.dumps(skeleton)})
        with pytest.raises(Malformed):
            serialization.loads(b"FRESHREC/1 unsigned\n" + body)
    with pytest.raises(Malformed, match="more than the limit"):
        serialization.loads(serialization.dumps({"t": torch.zeros(1000)}), max_bytes=100)


def test_pickles_are_refused_and_run_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    crafted = pickle.dumps({"state": {}, "meta": Payload(marker)})
    legacy = io.BytesIO()
    torch.save({"state": {}, "meta": Payload(marker)}, legacy)
    for data in (crafted, legacy.getvalue()):
        with pytest.raises(Malformed):
            Snapshot.from_bytes(data)
        with pytest.raises(Malformed):
            Checkpoints(tmp_path / "checkpoints").restore(data)
        with pytest.raises(serialization.UnsafeData):  # even the migration's restricted unpickler
            serialization.load_legacy(data)
    assert not marker.exists()


def snapshot(n_items: int = 5, **changes: object) -> Snapshot:
    settings = ModelSettings(dim=8, history_length=4, heads=2)
    net = SequenceNet(n_items, torch.randn(n_items, 6), settings)
    return Snapshot.of(net, [f"i{j}" for j in range(n_items)], [], checkpoint=2, updates=7, offset=99, **changes)


def test_a_snapshot_round_trips_signed() -> None:
    original = snapshot(loss=0.25)
    loaded = Snapshot.from_bytes(original.to_bytes(KEY), KEY)
    assert loaded.version == "2.7" and loaded.item_ids == original.item_ids and loaded.loss == 0.25
    assert loaded.settings == original.settings
    assert all(torch.equal(loaded.state[k], v) for k, v in original.state.items())


def test_snapshots_that_do_not_fit_their_settings_or_ids_are_refused() -> None:
    good = snapshot()
    bad_rows = Snapshot(**{**good.__dict__, "item_ids": [*good.item_ids, "extra"]})
    nan = dict(good.state)
    nan["query"] = torch.full_like(nan["query"], float("nan"))
    unexpected = {**good.state, "evil": torch.zeros(1)}
    cases = {
        "expected \\(6,\\)": bad_rows,
        "not finite": Snapshot(**{**good.__dict__, "state": nan}),
        "unexpected tensor": Snapshot(**{**good.__dict__, "state": unexpected}),
        "repeat": Snapshot(**{**good.__dict__, "item_ids": ["i0"] * 5}),
    }
    for reason, case in cases.items():
        with pytest.raises(Malformed, match=reason):
            Snapshot.from_bytes(case.to_bytes())
    extra_field = serialization.dumps({**good.__dict__, "settings": good.settings.model_dump(), "x": 1})
    with pytest.raises(Malformed, match="unexpected fields"):
        Snapshot.from_bytes(extra_field)
    wrong_settings = serialization.dumps({**good.__dict__, "settings": {"dim": -1}})
    with pytest.raises(Malformed, match="settings"):
        Snapshot.from_bytes(wrong_settings)


def test_checkpoints_sign_their_mirror_copies_and_refuse_foreign_ones(tmp_path: Path) -> None:
    mirrored: list[bytes] = []
    source = Checkpoints(tmp_path / "a", mirror=lambda data, _urgent: mirrored.append(data), key=KEY)
    state = {"weights": torch.arange(4.0), "buffer": np.arange(3)}
    source.save(state, offset=10, events_learned=10, loss=None)
    version, loaded = source.load(1)
    assert version.offset == 10 and torch.equal(loaded["weights"], state["weights"])
    target = Checkpoints(tmp_path / "b", key=KEY)
    assert target.restore(mirrored[0]).version == 1
    with pytest.raises(Malformed, match="not signed"):
        target.restore(serialization.dumps({"state": state, "meta": {"version": 2}}))
    with pytest.raises(Malformed, match="does not match"):
        Checkpoints(tmp_path / "c", key=b"other").restore(mirrored[0])


def test_migrate_rewrites_pickled_checkpoints_once_and_republishes_the_current(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for v in (1, 2):
        meta = {"version": v, "offset": 10 * v, "created": 0.0, "events_learned": 10 * v, "loss": None}
        state = {"w": torch.full((2,), float(v)), "a": np.arange(v)}
        torch.save({"state": state, "meta": meta}, folder / f"model-{v:06d}.pt")
        (folder / f"model-{v:06d}.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="migrate"):
        Checkpoints(folder).load(2)
    mirrored: list[bytes] = []
    checkpoints = Checkpoints(folder, mirror=lambda data, _urgent: mirrored.append(data), key=KEY)
    assert checkpoints.migrate() == (1, 2)
    assert not list(folder.glob("*.pt")) and checkpoints.current() is not None
    version, state = checkpoints.load(2)
    assert version.offset == 20 and torch.equal(state["w"], torch.full((2,), 2.0))
    assert np.array_equal(state["a"], np.arange(2))
    assert len(mirrored) == 1 and serialization.loads(mirrored[0], KEY)["meta"]["version"] == 2
    assert checkpoints.migrate() == ()  # once


def test_a_blob_is_read_from_a_view_of_a_larger_message_without_copying_the_message() -> None:
    """The learner's pipe carries a prefix, then the blob: the server hands a view on."""
    blob = serialization.dumps({"ids": ["a", "b"], "t": torch.arange(3)}, key=b"k" * 16)
    message = b"SNAPSHOT" + blob
    state = serialization.loads(memoryview(message)[len(b"SNAPSHOT") :], key=b"k" * 16)
    assert state["ids"] == ["a", "b"] and torch.equal(state["t"], torch.arange(3))
    with pytest.raises(serialization.Malformed, match="no FRESHREC/1 header"):
        serialization.loads(memoryview(message))
    with pytest.raises(serialization.Malformed, match="signature"):
        serialization.loads(memoryview(message)[len(b"SNAPSHOT") : -1], key=b"k" * 16)


def test_long_string_lists_are_saved_as_tensors_and_decoded_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A million ids in the JSON skeleton took 85 ms (and 50-70 ms more for the header)
    of one call holding the interpreter lock; as tensors they are decoded a piece at a time."""
    monkeypatch.setattr(serialization, "STRINGS_PIECE", 7)
    ascii_ids = [f"i{j}" for j in range(2_000)]
    mixed = [["", "é", "日本語", "a\ud800b", "plain"][j % 5] + str(j) for j in range(1_500)]
    with_none = [None if j % 3 else f"u{j}" for j in range(2_000)]
    blob = serialization.dumps({"ids": ascii_ids, "mixed": mixed, "users": with_none, "few": ["a", "b"]})
    loaded = serialization.loads(blob)
    assert loaded == {"ids": ascii_ids, "mixed": mixed, "users": with_none, "few": ["a", "b"]}
    body = memoryview(blob)[blob.index(b"\n") + 1 :]
    skeleton = serialization._header(body)[0]["__metadata__"]["freshrec"]
    assert "i1999" not in skeleton and "日本語" not in skeleton and "u1998" in skeleton  # the list with None stays


def test_a_reader_hands_back_a_string_list_it_decoded_before_and_decodes_only_what_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server takes in a whole snapshot of a million items every few minutes, nearly always
    with the ids of the one before (or those and a few more): decoding them again held the
    interpreter lock 0.1 s while requests waited. Anything else is decoded anew."""
    monkeypatch.setattr(serialization, "STRINGS_PIECE", 7)
    reuse = serialization.StringLists()

    def read(ids: list[str]) -> list[str]:
        got = serialization.loads(serialization.dumps({"ids": ids, "few": ["a"]}), reuse=reuse)
        assert got == {"ids": ids, "few": ["a"]}
        return got["ids"]  # type: ignore[no-any-return]

    first = [f"i{j}" for j in range(2_000)]
    known = read(first)
    assert read(list(first)) is known  # the same list object, not decoded again
    grown = read([*first, "é1", "x"])
    assert grown is not known and all(a is b for a, b in zip(grown, known, strict=False))  # the known strings kept
    assert read([*first, "é1", "x"]) is grown
    assert read([*first[:1000], "j1000", *first[1001:]]) is not grown  # a byte changed: decoded anew
    resplit = [*first[:-2], first[-2] + "i", first[-1][1:]]  # the same bytes, cut elsewhere
    assert read(resplit) is not known
    assert read(first[:1500]) is not known  # a shorter list


@given(
    st.lists(
        st.tuples(st.sampled_from(["same", "grow", "change", "other"]), st.lists(st.text(max_size=4), max_size=5)),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=60, deadline=None)
def test_a_reader_that_reuses_string_lists_reads_what_one_that_does_not_reads(
    steps: list[tuple[str, list[str]]],
) -> None:
    """Whatever lists follow each other (the same, grown at the end, changed, another), a
    reader handing back what it decoded before reads every blob as a fresh reader does."""
    reuse, ids = serialization.StringLists(), ["a", "b"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serialization, "STRINGS_MIN", 1)  # every list of strings as tensors
        for how, strings in steps:
            if how == "grow":
                ids = [*ids, *strings]
            elif how == "change" and ids:
                ids = [*ids[:-1], ids[-1] + "z", *strings]
            elif how == "other":
                ids = strings
            blob = serialization.dumps({"ids": ids})
            assert serialization.loads(blob, reuse=reuse) == serialization.loads(blob) == {"ids": ids}


def test_a_crafted_string_list_is_refused() -> None:
    from safetensors.torch import save

    good = torch.tensor(list(b"abc"), dtype=torch.uint8)
    split = torch.tensor(list("é".encode()), dtype=torch.uint8)  # two bytes
    for data, ends, reason in (
        (good, torch.tensor([2, 1, 3]), "ascend"),
        (good, torch.tensor([1, 2]), "ascend to its length"),
        (good, torch.tensor([-1, 3]), "ascend"),
        (good, torch.tensor([1, 3], dtype=torch.int32), "bytes and their ends"),
        (split, torch.tensor([1, 2]), "not UTF-8"),
    ):
        body = save({"t0": data, "t1": ends}, metadata={"freshrec": json.dumps({"$strings": ["t0", "t1"]})})
        with pytest.raises(Malformed, match=reason):
            serialization.loads(b"FRESHREC/1 unsigned\n" + body)


def test_tensors_are_read_without_safetensors_copies_and_crafted_entries_are_refused() -> None:
    state = {
        n: torch.arange(6, dtype=d).reshape(2, 3)
        for n, d in (
            ("h", torch.float16),
            ("b", torch.int8),
            ("u", torch.uint8),
            ("i", torch.int32),
            ("s", torch.int16),
        )
    }
    loaded = serialization.loads(serialization.dumps(state))
    assert all(torch.equal(loaded[n], t) and loaded[n].dtype == t.dtype for n, t in state.items())
    meta = {"__metadata__": {"freshrec": json.dumps({"$tensor": "t0"})}}
    for entry, reason in (
        ({"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}, "dtype"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}, "fit"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "fit"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [2**63 + 1, 2], "data_offsets": [0, 8]}, "fit"),  # 2 in int64, wrapped
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "fit"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}, "entry"),
    ):
        header = json.dumps({**meta, "t0": entry}).encode()
        body = len(header).to_bytes(8, "little") + header + bytes(8)
        with pytest.raises(Malformed, match=reason):
            serialization.loads(b"FRESHREC/1 unsigned\n" + body)
