"""The freshrec network: text-aware items and a causal self-attention user encoder.

Items. Each item is ``adapter(text embedding) + id embedding``. The text
embedding comes frozen from the sentence encoder; the adapter (linear or a
small MLP) maps it into the model's space, so an item nobody has touched yet
already sits near the items it resembles. The ID embedding row (and the ID
bias) of an item switches on when the item first appears in the stream and
stays exactly zero before: an untouched item is judged on its text alone and
is not pushed down as a negative before anyone could react to it.

Users. The user's last ``L`` events become tokens ``item + event type +
features(rating, time gap) + position``, followed by a query token that
carries the time since the last event; a causal Transformer encoder
(SASRec, Kang and McAuley 2018) reads them, and the query token's output is
the user vector. A user with no history gets the query token alone, a
learned default. The user vector also gets the last item's vector times a
learned weight per event type (``last_item_weight``): "more like what they
just touched" from the first step. Optionally (``use_user_ids``) the query token also carries
a per-user ID embedding, a row of a table that grows as users appear; rows of
users the table does not hold yet count as zero.

Score = ``user . item + bias(item)``, where the bias has a text part and an
ID part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrec.domain import EventType
from freshrec.ingest.feedback import TYPE_CODES
from freshrec.settings import ModelSettings

N_TYPES = len(EventType)
Pair = tuple[Tensor, Tensor]
GROUP_COST = 256
"""What one more encoder pass costs in fixed per-operation overhead, in positions (measured
on the reference machine: a pass over a few rows costs about what 256 more positions do).
Rows are grouped by length only where the padding cut saves more than the passes added."""
SECONDS_PER_HOUR = 3600.0


class SequenceNet(nn.Module):
    text: Tensor
    active: Tensor
    interactions: Tensor
    last_seen: Tensor
    causal: Tensor
    eye: Tensor

    def __init__(
        self,
        n_items: int,
        text: Tensor | None,
        settings: ModelSettings,
        rating_scale: float = 5.0,
        n_users: int = 0,
    ):
        super().__init__()
        s = settings
        d = s.dim
        self.settings = s
        self.rating_scale = rating_scale
        self.use_text = s.use_text and text is not None
        self.use_ids = s.use_ids or not self.use_text
        text = text if text is not None else torch.zeros(n_items, 1)
        self.register_buffer("text", text.float(), persistent=True)
        self.register_buffer("active", torch.zeros(n_items, dtype=torch.bool), persistent=True)
        self.register_buffer("interactions", torch.zeros(n_items), persistent=True)
        self.register_buffer("last_seen", torch.full((n_items,), float("-inf"), dtype=torch.float64), persistent=True)
        width = text.shape[1]
        if s.adapter == "mlp":
            self.adapter: nn.Module = nn.Sequential(nn.Linear(width, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        else:
            self.adapter = nn.Linear(width, d)
        self.text_bias = nn.Linear(width, 1)
        self.item_id = nn.Embedding(n_items, d)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_id.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.type_emb = nn.Embedding(N_TYPES + 1, d)  # 0: padding and the query token
        self.features = nn.Linear(3, d)
        self.position = nn.Embedding(s.history_length + 1, d)
        self.query = nn.Parameter(torch.zeros(d))
        self.user_id = nn.Embedding(n_users, d) if s.use_user_ids else None
        if self.user_id is not None:
            nn.init.zeros_(self.user_id.weight)
        layer = nn.TransformerEncoderLayer(
            d, s.heads, dim_feedforward=2 * d, dropout=s.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, s.layers, enable_nested_tensor=False)
        self.grouped = True
        """Run rows in groups by history length (see :meth:`_encode`); off where the
        batch is mapped over (``torch.func.vmap`` allows no data-dependent shapes)."""
        self.norm = nn.LayerNorm(d)
        causal, eye = _masks(s.history_length + 1)
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("eye", eye, persistent=False)
        # registered last, so that it is the last parameter: see upgrade_state
        self.last_item = _last_item_weights(s.last_item_weight) if s.last_item_weight is not None else None

    @classmethod
    def from_state(
        cls, state: dict[str, Tensor], text: Tensor | None, settings: ModelSettings, rating_scale: float = 5.0
    ) -> SequenceNet:
        """A network made of ``state``'s own tensors (shared, not copied), with
        ``text`` as its frozen item embeddings.

        Nothing is initialised first: serving builds a network for every
        published snapshot, and the random initialisation of a 10,000-item
        network took 26 ms, holding the interpreter lock against requests."""
        n_items = state["item_id.weight"].shape[0]
        users = state.get("user_id.weight")
        with torch.device("meta"):
            shape = torch.empty(n_items, text.shape[1]) if text is not None else None
            net = cls(n_items, shape, settings, rating_scale, n_users=0 if users is None else users.shape[0])
        net.load_state_dict(upgrade_state(net, state), strict=False, assign=True)
        net.text = text.float() if net.use_text and text is not None else torch.zeros(n_items, 1)
        net.causal, net.eye = _masks(settings.history_length + 1)
        if left := [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]:
            raise ValueError(f"the state lacks {left}")
        return net

    # -- items -------------------------------------------------------------
    def observe(self, items: Tensor, times: Tensor) -> Tensor:
        """Count interactions (an item's ID parts switch on at its first) and,
        with ``id_ttl_s``, switch off the rows unused for longer; returns the
        expired rows, whose ID parts are now zero. Only the events' rows are
        written (without a TTL, the cost does not grow with the catalog)."""
        self.interactions.index_add_(0, items, torch.ones(len(items)))
        self.active[items] = True
        self.last_seen.scatter_reduce_(0, items, times, "amax")  # the latest, whatever the order
        ttl = self.settings.id_ttl_s
        if ttl is None:
            return torch.zeros(0, dtype=torch.long)
        expired = torch.nonzero(self.active & (self.last_seen < times.max() - ttl)).squeeze(1)
        with torch.no_grad():
            self.item_id.weight[expired] = 0
            self.item_bias.weight[expired] = 0
        self.active[expired] = False
        self.interactions[expired] = 0
        return expired

    @torch.no_grad()
    def grow(self, text: Tensor) -> None:
        """Append items (rows of frozen text embeddings) to the catalog.

        The new ID rows start at zero and inactive, like every untouched item;
        parameters keep their identity, so optimizers keep tracking them
        (their per-row state is grown by the trainer)."""
        n = text.shape[0]
        if not self.use_text:
            text = torch.zeros(n, self.text.shape[1])
        if text.shape[1] != self.text.shape[1]:
            raise ValueError(f"text rows have width {text.shape[1]}, the catalog {self.text.shape[1]}")
        self.text = torch.cat([self.text, text.float()])
        for name in ("active", "interactions", "last_seen"):
            rows = getattr(self, name)
            setattr(self, name, torch.cat([rows, untouched(name, rows, n)]))
        for table in (self.item_id, self.item_bias):
            _extend(table, n)

    @torch.no_grad()
    def grow_users(self, n_users: int) -> int:
        """Make room for user codes ``0 .. n_users - 1`` (new rows are zero);
        returns the number of rows before."""
        table = self.user_id
        before = 0 if table is None else table.num_embeddings
        if table is not None and n_users > before:
            _extend(table, n_users - before)
        return before

    def text_part(self, rows: Tensor | None = None) -> Pair:
        """What the items' text adds to their vectors and biases (``rows`` only, if given):
        the item tower's alone, which deltas leave as it was (serving keeps it between them)."""
        text = self.text if rows is None else self.text.index_select(0, rows)  # (faster than text[rows])
        return self.adapter(text), self.text_bias(text).squeeze(1)

    def item_table(
        self, rows: Tensor | None = None, sparse: bool = False, text_part: Pair | None = None, out: Pair | None = None
    ) -> Pair:
        """Vectors ``(n, d)`` and biases ``(n,)`` of every item, or of ``rows`` only (a
        training step on a large catalog needs a few thousand of them); ``text_part``: what
        :meth:`text_part` gave for the same rows. ``sparse``: the ID and bias tables'
        gradients are sparse, ``rows`` only. Why: a dense gradient is a whole table, and the
        optimizer then walks every row of it (most of a step's time on a million items).
        ``out``: tables of those shapes to write them into, where nothing records gradients
        (serving's, with spare rows after them: :class:`~freshrec.model.rows.Room`)."""
        if rows is None:
            ids, item_bias = self.item_id.weight, self.item_bias.weight
        else:
            ids = F.embedding(rows, self.item_id.weight, sparse=sparse)
            item_bias = F.embedding(rows, self.item_bias.weight, sparse=sparse)
        active = (self.active if rows is None else self.active[rows]).unsqueeze(1).float()
        if not torch.is_grad_enabled():
            return self._served_table(ids, item_bias, active, text_part, rows, out)
        if out is not None:
            raise ValueError("item_table writes into given tables only where nothing records gradients")
        vectors, bias = torch.zeros_like(ids), torch.zeros(ids.shape[0], device=ids.device)
        if self.use_text:
            from_text, text_bias = text_part if text_part is not None else self.text_part(rows)
            vectors, bias = vectors + from_text, bias + text_bias
        if self.use_ids:
            vectors = vectors + ids * active
        bias = bias + (item_bias * active).squeeze(1)
        return vectors, bias

    def _served_table(
        self,
        ids: Tensor,
        item_bias: Tensor,
        active: Tensor,
        text_part: Pair | None,
        rows: Tensor | None,
        out: Pair | None = None,
    ) -> Pair:
        """:meth:`item_table` where nothing records gradients: each output made in one pass,
        without a table-sized temporary for each term (into ``out`` if given). Why: serving
        builds a whole million-item table for each whole snapshot, and each temporary was a
        quarter of a gigabyte of fresh memory, written and read again (229-614 ms against
        58-105 ms)."""
        into, into_bias = out if out is not None else (None, None)
        own_bias = torch.mul(item_bias.squeeze(1), active.squeeze(1), out=into_bias)
        if not self.use_text:
            if self.use_ids:
                return torch.mul(ids, active, out=into), own_bias
            return (torch.zeros_like(ids) if into is None else into.zero_()), own_bias
        from_text, text_bias = text_part if text_part is not None else self.text_part(rows)
        if self.use_ids:
            vectors = torch.addcmul(from_text, ids, active, out=into)
        else:
            vectors = from_text.clone() if into is None else into.copy_(from_text)
        return vectors, own_bias.add_(text_bias)

    # -- users -------------------------------------------------------------
    def users(
        self,
        table: Tensor,
        hist_item: Tensor,
        hist_type: Tensor,
        hist_value: Tensor,
        hist_time: Tensor,
        time: Tensor,
        user: Tensor | None = None,
        every_position: bool = False,
        sparse: bool = False,
    ) -> Tensor:
        """User vectors ``(B, d)`` from right-aligned, left-padded histories; with
        ``every_position``, the states ``(B, L + 1, d)`` after each history token
        and the query (SASRec trains each of them to predict the next item).
        ``user`` holds the users' codes for the ID embedding (``-1``: none);
        ``sparse``: its gradient is sparse (see :meth:`item_table`)."""
        batch = hist_item.shape[0]
        pad = hist_item < 0
        items = table[hist_item.clamp(min=0)] * (~pad).unsqueeze(2)
        value = torch.nan_to_num(hist_value, nan=0.0) / self.rating_scale
        has_value = (~torch.isnan(hist_value)).float()
        previous = torch.cat([hist_time[:, :1], hist_time[:, :-1]], dim=1)
        gap = torch.log1p(torch.nan_to_num((hist_time - previous).clamp(min=0), nan=0.0) / SECONDS_PER_HOUR)
        feats = torch.stack([value, has_value, gap.float()], dim=2)
        types = hist_type.long() + 1  # 0: padding
        tokens = items + self.type_emb(types) + self.features(feats)
        last = torch.nan_to_num(hist_time[:, -1], nan=0.0)
        since = torch.where(pad[:, -1], torch.zeros_like(time), (time - last).clamp(min=0))
        q_feats = torch.stack(
            [torch.zeros_like(time), torch.zeros_like(time), torch.log1p(since / SECONDS_PER_HOUR)], 1
        )
        query = self.query + self.features(q_feats.float())
        if self.user_id is not None and user is not None and self.user_id.num_embeddings:
            known = (user >= 0) & (user < self.user_id.weight.shape[0])  # a traced pass reads it from the table
            rows = F.embedding(torch.where(known, user, 0), self.user_id.weight, sparse=sparse)
            query = query + rows * known.unsqueeze(1)
        query = query.unsqueeze(1)
        seq = torch.cat([tokens, query], dim=1)
        padding = torch.cat([pad, torch.zeros(batch, 1, dtype=torch.bool, device=pad.device)], dim=1)
        states: Tensor = self.norm(self._encode(seq, padding, every_position))
        if self.last_item is not None:
            # padded positions hold zero vectors, so an empty history adds nothing
            touched = items * self.last_item(types)
            states = states + (torch.cat([touched, touched[:, -1:]], dim=1) if every_position else touched[:, -1])
        return states

    def _encode(self, seq: Tensor, padding: Tensor, every_position: bool) -> Tensor:
        """The encoder's outputs ``(B, size, d)`` for every position, or ``(B, d)`` for the
        query's alone; rows are run in groups by how many trailing positions they need.

        Why: on a sparse log most histories hold a few events or none, and padded
        positions cost as much as real ones. A row's positions before its first token
        are padding that no later position attends to, so cutting them off changes
        nothing but the cost (positions stay right-aligned, as for a shorter history
        length): a batch of Steam-like histories runs several times faster. Widths
        are rounded up to powers of two, so a batch makes a few groups at most. The
        outputs of cut positions are zeros (nothing reads a padded position's state).
        """
        batch, size = padding.shape
        groups, widths = [size], None
        if self.grouped:
            needed = size - (~padding).float().argmax(1)  # from the first token on (the query's at least)
            widths = torch.clamp(2 ** torch.ceil(torch.log2(needed.float())).long(), max=size)
            groups = torch.unique(widths).tolist()
            if batch * size - int(widths.sum()) < GROUP_COST * (len(groups) - 1):
                groups = [size]  # too little padding to cut for the passes it takes (a server's small batches)
        if widths is None or groups == [size]:
            return self._run(seq, padding, every_position)
        result = seq.new_zeros((batch, size, seq.shape[2]) if every_position else (batch, seq.shape[2]))
        for width in groups:
            rows = torch.nonzero(widths == width).squeeze(1)
            out = self._run(seq[rows, size - width :], padding[rows, size - width :], every_position)
            if every_position:
                result[rows, size - width :] = out
            else:
                result[rows] = out
        return result

    def _run(self, seq: Tensor, padding: Tensor, every_position: bool) -> Tensor:
        """The encoder over right-aligned positions, the last one the query's: the outputs
        of all ``(B, size, d)``, or of the query alone ``(B, d)``.

        For the query alone, the last layer computes attention from the query only and its
        feed-forward block for the query only: nothing else of that layer is read, and
        those per-position blocks were three quarters of the encoder's work in scoring and
        online steps (every position's keys and values are still needed)."""
        size = seq.shape[1]
        offset = self.position.num_embeddings - size
        x = seq + self.position.weight[offset:].unsqueeze(0)
        # causal, padding hidden, and every position may see itself: a padded
        # position with nothing to attend to would otherwise produce NaNs
        allowed = self.causal[offset:, offset:].unsqueeze(0) & (~padding.unsqueeze(1) | self.eye[:size, :size])
        mask = torch.zeros(allowed.shape, device=seq.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.settings.heads, dim=0)
        if every_position:
            out: Tensor = self.encoder(x, mask=mask)
            return out
        *layers, last = self.encoder.layers
        for layer in layers:
            x = layer(x, src_mask=mask)
        return _query_output(last, x, mask[:, -1:])

    def scores(self, users: Tensor, table: Tensor, bias: Tensor, items: Tensor | None = None) -> Tensor:
        """Scores of ``items`` (default: every item) for each user."""
        if items is not None:
            table, bias = table[items], bias[items]
        out: Tensor = users @ table.T + bias
        return out


NOT_POSITIVE = (EventType.DISLIKE, EventType.IMPRESSION)


def _last_item_weights(start: float) -> nn.Embedding:
    """The last item's weight per event type (row 0: padding), ``start`` for the
    types that say the user wants more of it, 0 for the others."""
    table = nn.Embedding(N_TYPES + 1, 1)
    with torch.no_grad():
        table.weight.fill_(start)
        table.weight[0] = 0
        for kind in NOT_POSITIVE:
            table.weight[TYPE_CODES[kind] + 1] = 0
    return table


def upgrade_state(net: SequenceNet, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state saved before the last-item term existed gets its weights at zero,
    which gives the scores it gave then (learning then moves them)."""
    if net.last_item is None or "last_item.weight" in state:
        return state
    return {**state, "last_item.weight": torch.zeros(N_TYPES + 1, 1)}


def _query_output(layer: nn.TransformerEncoderLayer, x: Tensor, mask: Tensor) -> Tensor:
    """What the pre-norm ``layer`` outputs at the last position of ``x`` ``(B, size, d)``
    (``mask``: that position's attention mask ``(B * heads, 1, size)``), computed for that
    position alone: the same operations as ``layer(x)[:, -1]``, less the others' rows."""
    h = layer.norm1(x)
    attended = layer.self_attn(h[:, -1:], h, h, attn_mask=mask, need_weights=False)[0][:, 0]
    y = x[:, -1] + layer.dropout1(attended)
    out: Tensor = y + layer._ff_block(layer.norm2(y))
    return out


def _masks(size: int) -> tuple[Tensor, Tensor]:
    """The causal attention mask and the identity, ``size`` x ``size``, on the CPU even where a
    network is made on the meta device (:meth:`SequenceNet.from_state`): there ``tril`` runs
    PyTorch's Python reference, 0.9 s the first time in a process, about 1 ms after."""
    cpu = torch.device("cpu")
    return torch.ones(size, size, dtype=torch.bool, device=cpu).tril(), torch.eye(size, dtype=torch.bool, device=cpu)


def untouched(name: str, like: Tensor, n: int) -> Tensor:
    """``n`` rows of the per-item entry ``name`` (shaped like ``like``) as for an item
    nobody has touched: inactive, no interactions, no ID embedding, never seen."""
    return like.new_full((n, *like.shape[1:]), float("-inf") if name == "last_seen" else 0)


def _extend(table: nn.Embedding, n: int) -> None:
    """``n`` zero rows more; the parameter keeps its identity, so optimizers keep tracking it."""
    table.weight.data = torch.cat([table.weight.data, table.weight.new_zeros(n, table.embedding_dim)])
    table.num_embeddings += n
