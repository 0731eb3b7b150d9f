"""Write a synthetic dataset in the exact RecFlow on-disk layout (RECFLOW_FORMAT.md).

The real RecFlow cannot be downloaded on our machines, so the product's default data
source and most tests use files written here. They have the same folders, file names,
column names, dtypes, units and pickle structure as the published dataset. The stage
labels come from a simulated production cascade over a latent user/item world, so they
can be learned from the features and cascade methods can give different results.

World
-----
* Items. Every ``category_level_two`` (cat2) belongs to one ``category_level_one``
  (cat1). Every author has a home cat2, and 80 % of an author's items are in it. Item
  ``i`` has a latent vector
  ``v_i = 0.8 E1[cat1_i] + 0.8 E2[cat2_i] + 0.6 EA[author_i] + 0.5 eps_i``, so most of
  what makes an item relevant can be read from its ids, and an id embedding can learn
  it. It also has a popularity bias ``b_i = 0.3 eta_i + T[upload_type_i]``. Uploads
  fall between 120 and 30 days before the first day, so every item exists before anyone
  sees it. Durations are log-normal around 30 s.
* Users have device, age, gender and province ids. User ``u`` has a preference vector
  ``p_u = 0.5 DA[age_u] + 0.5 DG[gender_u] + n_u``, so demographics carry some signal.
  Users differ in activity (log-normal weights decide who sends the requests).
* Relevance of item i for a request of user u at local hour h:
  ``rel = (p_u . v_i) / s + b_i + H[h // 6, cat1_i]``, where ``s`` scales the dot
  product to unit standard deviation. The hour term is a small context effect: some
  categories do better at night.

History (seq_effective_50_dict)
-------------------------------
Every user has a timeline of effective views. The items are drawn with probability
proportional to ``exp(rel_base / 0.5)``, where ``rel_base`` is ``rel`` without the hour
term, so a user's sequence shows what they like. 90 % of users have 50 views in the 30
days before the first day. The others are "new users" with 0-49 such views, so their
sequences can be shorter or empty. Everyone also has about 5 views a day during the
period (10 slots a day, each used with probability 1/2), so sequences change over time.
A request's sequence is the last 50 views strictly before the request time,
left-padded with zero rows. A view's request id comes from a separate id block: views
come from unlogged traffic, because the logged requests are a sample of traffic. So a
view's request id never collides with a logged request id.

Cascade (per request, all requests of a day at once)
----------------------------------------------------
Every stage scores with ``rel + sigma_s * N(0, 1)``, and the noise falls from stage to
stage, so early stages are cheaper and cruder:

=========  =====  ===============================================  ===================
stage      sigma  keeps (default)                                  label of the dropped
=========  =====  ===============================================  ===================
retrieval  1.0    top ``pool_size`` = 300 of all items (the pool)  (not logged)
pre-rank   0.8    top 150 of the pool                              prerank_neg
coarse     0.6    top 80                                           coarse_neg
rank       0.4    top 40 = rank_pos (rank_index = position)        rank_neg
rerank     0.3    top 10 of the rank survivors = rerank_pos        rerank_neg
=========  =====  ===============================================  ===================

Large catalogues: above ``max_scan_items`` (100,000) items, retrieval scores a uniform
sample of ``scan_sample`` (20,000) items per group of requests, and histories come from a
2,048-item sample per group of users, so a RecFlow-sized vocabulary (9M videos) costs
seconds, not items x requests; smaller catalogues are scanned whole, as always.

RECFLOW_FORMAT.md calls rank_pos the rank stage's top-10. Here rank keeps 40, so the
stored rank_pos lists hold more than 10 items (the first-10 rule matters for them) and
rerank has rank survivors to drop (rerank_neg).

The rank survivors that rerank drops are ``rerank_neg`` and keep ``rank_pos = 1``. An
item can be both rerank_pos and rank_pos: it has one all_stage row with both flags. The
rerank top 1-6 items (a random number per request) are shown (``realshow``). Their
feedback (playing_time ms, effective_view, long_view, like, follow, forward, comment)
is drawn from their relevance. On other rows the feedback is null.

What is stored
--------------
``request_id_dict`` keeps a sample of each label's items per request, as ``[n, 8]`` int64
arrays with the documented columns. Column 7 holds the item's effective_view in that
request (0 unless it was shown and effectively viewed). Sizes: usually 11-20 items per
label, so the "first 10 stored rows" rule matters. rerank_pos has at most its 10 items
and realshow has its 1-6. ``rank_pos``, ``rerank_pos`` and ``realshow`` are stored in
index order, so the first 10 rank_pos rows have rank_index 0..9. Negative labels are in
random order. About 4 % of requests are "short": each of their labels, with
probability 1/2, keeps only 0-9 items. An empty label is left out of the dict half the
time and stored as a ``[0, 8]`` array otherwise, so readers see both forms.

``all_stage`` has exactly one row per (request, item) stored in the dict. Its flags are
the true cascade outcome of the item. For example, a rerank_neg item has rank_pos = 1 and
its true rank_index, even when it is not in the stored rank_pos sample. Rows of a request
are contiguous, with requests in time order and items in random order. Request ids
are unique across days (day ``d`` uses the block ``[d R, (d + 1) R)``, shuffled). All ids
are 0-based and smaller than their count in ``others/id_cnt.pkl``.

Also written: ``realshow/<day>.feather`` (the all_stage rows with realshow = 1),
``others/realshow_video_info.feather`` (one row per item) and
``synthetic_config.json`` (the configuration, so a later call can tell its own output
from somebody else's data). Files are written atomically (``lcron.atomic``). Pickles use
protocol 4 and feather files use zstd. The same configuration gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import multiprocessing
import os
import pickle
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from lcron.atomic import atomic_open, write_json
from lcron.data import fields
from lcron.data import schemas as S
from lcron.cpu_quota import THREAD_VARIABLES, usable_cpus
from lcron.defaults import SYNTHETIC
from lcron.errors import ConfigError, OutputExistsError
from lcron.memtrim import available_bytes
from lcron.outputs import file_sha256
from lcron.progress import Progress
from lcron.step_output import StepOutput

# ----------------------------------------------------------------------------- layout
# The RecFlow layout is lcron.data.schemas' (the reader validates against the same names);
# only the generator's own choices are spelled here.
STAGE_LABELS = S.STAGE_LABELS
FLAG_COLUMNS = S.STAGE_LABELS  # every stage label is also an all_stage 0/1 column
DICT_COLUMNS = S.REQUEST_ID_DICT_COLUMNS
SEQ_COLUMNS = S.SEQ_COLUMNS
SEQ_LEN = fields.SEQ_LEN
INDEX_COLUMNS = tuple(S.INDEX_COLUMNS.values())
FEEDBACK_COLUMNS = S.FEEDBACK_COLUMNS
ALL_STAGE_COLUMNS = tuple(c["name"] for c in S.ALL_STAGE_COLUMNS)  # the order the files are written in
# others/id_cnt.pkl: the keys in the order this generator has always written them.
ID_CNT_KEYS = ("user_id", "device_id", "age", "gender", "province", "video_id", "author_id",
               "category_level_one", "category_level_two", "upload_type")
# How the published others/id_cnt.pkl spells two of its keys (the reader accepts both).
PUBLISHED_SPELLINGS = {k: v[1] for k, v in S.ID_CNT_SPELLINGS.items() if len(v) > 1}
MANIFEST_NAME = "synthetic_config.json"
RECFLOW_SUBDIRS = ("all_stage", "realshow", "request_id_dict", "seq_effective_50_dict", "others")

#: The most ids of one kind an embedding table can index (shifted ids in int32), as for a source's id_cnt.
MAX_IDS = 2**31 - 3
# Measured peak memory of a generation (docs/scale.md): per item/user of the world, per request of a day.
_BYTES_PER_ID = 200
_BYTES_PER_REQUEST = 23 * 1024

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# Requests per local hour: a quiet night, a lunch bump and an evening peak.
_HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 4, 5, 6, 7, 6, 5, 5, 5, 6, 7, 8, 9, 9, 8, 5], float)
_HOUR_WEIGHTS /= _HOUR_WEIGHTS.sum()
_HOUR_BUCKETS = 4  # the hour context effect works on 6-hour buckets
_HISTORY_TEMPERATURE = 0.5
_VIEWS_PER_DAY = 10
_HISTORY_WINDOW_DAYS = 30
_UPLOAD_WINDOW_DAYS = (30, 120)
# Chunk the [requests, items] relevance matrix to about this many float32 cells (8 MB).
_CHUNK_CELLS = 1 << 21
# Large catalogues: each group of ~1,000 users draws its views from this many sampled items
# (history costs users x sample cells; 42k users x 2k = 84M).
_HISTORY_SAMPLE = 2048
_EMPTY = np.empty((0, 0), np.int64)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that decides the generated files (same config -> same bytes).

    The first eight fields are the arguments of :func:`generate`. The rest tune the
    world and the simulated cascade. Their defaults are documented in the module
    docstring.
    """

    num_days: int = SYNTHETIC.num_days
    start_date: str = SYNTHETIC.start_date
    requests_per_day: int = SYNTHETIC.requests_per_day
    users: int = SYNTHETIC.users
    items: int = SYNTHETIC.items
    seed: int = SYNTHETIC.seed
    published_spellings: bool = True
    # world vocabularies (authors default to items // 10)
    authors: int | None = None
    categories_level_one: int = 24
    categories_level_two: int = 120
    upload_types: int = 8
    ages: int = 8
    genders: int = 3
    provinces: int = 34
    latent_dim: int = 16
    new_user_rate: float = 0.1
    utc_offset_hours: int = 8
    # cascade: retrieval pool, then what pre-rank, coarse, rank and rerank keep
    pool_size: int = 300
    prerank_keep: int = 150
    coarse_keep: int = 80
    rank_keep: int = 40
    rerank_keep: int = 10
    # score noise of retrieval, pre-rank, coarse, rank, rerank (relevance has unit scale)
    stage_noise: tuple[float, float, float, float, float] = (1.0, 0.8, 0.6, 0.4, 0.3)
    max_shown: int = 6
    # Catalogues larger than this are not scanned whole: each group of requests (retrieval)
    # or users (history) scores a uniform sample of ``scan_sample`` items instead, so a
    # RecFlow-sized vocabulary (9M items) costs what a 100k-item one does.
    max_scan_items: int = 100_000
    scan_sample: int = 20_000
    # request_id_dict sampling
    stored_min: int = 11
    stored_max: int = 20
    short_request_rate: float = 0.04

    @property
    def num_authors(self) -> int:
        return self.authors if self.authors is not None else max(1, self.items // 10)

    @property
    def days(self) -> list[str]:
        start = self.first_day
        return [(start + _dt.timedelta(days=d)).isoformat() for d in range(self.num_days)]

    @property
    def first_day(self) -> _dt.date:
        try:
            return _dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ConfigError(
                f"synthetic data: start_date must be an ISO date YYYY-MM-DD, got {self.start_date!r}") from None

    def id_counts(self) -> dict[str, int]:
        """Vocabulary size of every id field (canonical spellings)."""
        counts = {
            "user_id": self.users, "device_id": self.users, "age": self.ages, "gender": self.genders,
            "province": self.provinces, "video_id": self.items, "author_id": self.num_authors,
            "category_level_one": self.categories_level_one,
            "category_level_two": self.categories_level_two, "upload_type": self.upload_types,
        }
        return {k: int(counts[k]) for k in ID_CNT_KEYS}

    def validate(self, day_copies: int = 1) -> None:
        """Raise ConfigError that names the field and the value it needs (``day_copies``:
        days simulated at once, each holding its own memory)."""
        def fail(msg: str) -> None:
            raise ConfigError(f"synthetic data: {msg}")

        for name in ("num_days", "requests_per_day", "users", "items", "categories_level_one",
                     "categories_level_two", "upload_types", "ages", "genders", "provinces", "latent_dim",
                     "max_shown"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                fail(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.authors, bool) or not isinstance(self.num_authors, (int, np.integer)) or self.num_authors < 1:
            fail(f"authors must be an integer >= 1, got {self.authors!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            fail(f"seed must be a non-negative integer, got {self.seed!r}")
        self.first_day  # noqa: B018 - validates start_date
        if self.categories_level_two < self.categories_level_one:
            fail(f"categories_level_two ({self.categories_level_two}) must be >= categories_level_one "
                 f"({self.categories_level_one}): every cat1 needs a cat2")
        for name in ("max_scan_items", "scan_sample"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < self.pool_size:
                fail(f"{name} must be an integer >= pool_size ({self.pool_size}), got {value!r}")
        if self.items < self.pool_size:
            fail(f"items={self.items} is smaller than the candidate pool (pool_size={self.pool_size}); "
                 f"use items >= {self.pool_size}")
        keeps = (self.pool_size, self.prerank_keep, self.coarse_keep, self.rank_keep, self.rerank_keep)
        if not all(a > b for a, b in zip(keeps, keeps[1:])) or self.rerank_keep < 1:
            fail(f"cascade sizes must strictly decrease: pool_size {self.pool_size} > prerank_keep "
                 f"{self.prerank_keep} > coarse_keep {self.coarse_keep} > rank_keep {self.rank_keep} > "
                 f"rerank_keep {self.rerank_keep} >= 1")
        if self.max_shown > self.rerank_keep:
            fail(f"max_shown ({self.max_shown}) must be <= rerank_keep ({self.rerank_keep})")
        if len(self.stage_noise) != 5 or any(s < 0 for s in self.stage_noise):
            fail(f"stage_noise needs 5 non-negative values (retrieval, prerank, coarse, rank, rerank), "
                 f"got {self.stage_noise!r}")
        if not 0 <= self.stored_min <= self.stored_max:
            fail(f"need 0 <= stored_min <= stored_max, got {self.stored_min}, {self.stored_max}")
        for name in ("short_request_rate", "new_user_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(f"{name} must be within [0, 1], got {getattr(self, name)!r}")
        for name in ("users", "items", "num_authors"):
            if getattr(self, name) > MAX_IDS:
                fail(f"{name.removeprefix('num_')}={getattr(self, name)} is more ids than an embedding table can "
                     f"index (at most {MAX_IDS})")
        # Each worker process receives its own copy of the world and simulates one day at a time.
        need = self.memory_estimate() if day_copies <= 1 else self.world_bytes() + day_copies * self.worker_bytes()
        free = available_bytes()
        if free is not None and need > free:
            fail(f"generating needs about {need / 2**30:,.1f} GiB ({self.items:,} items and {self.users:,} users at "
                 f"~{_BYTES_PER_ID} bytes each, {self.requests_per_day:,} requests a day at ~{_BYTES_PER_REQUEST // 1024}"
                 f" KiB each{f', {day_copies} days at once' if day_copies > 1 else ''}) and {free / 2**30:,.1f} GiB are available;"
                 " use fewer items, users, requests per day or workers")

    def world_bytes(self) -> int:
        """The hidden world's share of :meth:`memory_estimate` (held once per process)."""
        return _BYTES_PER_ID * (int(self.items) + int(self.users))

    def worker_bytes(self) -> int:
        """A day-simulating worker process: its copy of the world and one day."""
        return self.world_bytes() + _BYTES_PER_REQUEST * int(self.requests_per_day)

    def memory_estimate(self) -> int:
        """Peak bytes of a generation, from measurements (docs/scale.md): ~200 B per item and
        user of the hidden world, ~23 KiB per request of the largest day (5,511 MiB measured for
        a 250,000-request day)."""
        return self.world_bytes() + _BYTES_PER_REQUEST * int(self.requests_per_day)


# ----------------------------------------------------------------------------- world
@dataclass
class _World:
    """The hidden world: ids, latent vectors and users' view timelines (all numpy)."""

    user_device: np.ndarray
    user_age: np.ndarray
    user_gender: np.ndarray
    user_province: np.ndarray
    user_pref: np.ndarray          # [U, d]
    user_activity: np.ndarray      # [U] request probabilities
    item_author: np.ndarray
    item_cat1: np.ndarray
    item_cat2: np.ndarray
    item_upload_type: np.ndarray
    item_upload_ts: np.ndarray     # seconds
    item_duration: np.ndarray      # ms
    item_latent: np.ndarray        # [I, d]
    item_bias: np.ndarray          # [I]
    hour_effect: np.ndarray        # [_HOUR_BUCKETS, cat1]
    dot_scale: float
    # view timelines, filled by _build_history (they are sampled from the fields above)
    hist_time: np.ndarray = field(default_factory=lambda: _EMPTY)     # [U, H] ms, sorted; int64 max = no view
    hist_item: np.ndarray = field(default_factory=lambda: _EMPTY)     # [U, H]
    hist_play: np.ndarray = field(default_factory=lambda: _EMPTY)     # [U, H] playing time ms
    hist_request: np.ndarray = field(default_factory=lambda: _EMPTY)  # [U, H] request id of the view

    def relevance_all(self, users: np.ndarray, hour_bucket: np.ndarray | None) -> np.ndarray:
        """rel[r, i] of users[r] for every item i (float32; the formula is in the module docstring)."""
        latent = self.item_latent.astype(np.float32)
        rel = self.user_pref[users].astype(np.float32) @ latent.T
        rel *= np.float32(1.0 / self.dot_scale)
        rel += self.item_bias.astype(np.float32)[None, :]
        if hour_bucket is not None:
            rel += self.hour_effect.astype(np.float32)[:, self.item_cat1][hour_bucket]
        return rel


    def relevance_of(self, users: np.ndarray, items: np.ndarray, hour_bucket: np.ndarray | None) -> np.ndarray:
        """rel[r, j] of users[r] for item items[j] only (the sampled-catalogue path)."""
        rel = self.user_pref[users].astype(np.float32) @ self.item_latent[items].astype(np.float32).T
        rel *= np.float32(1.0 / self.dot_scale)
        rel += self.item_bias[items].astype(np.float32)[None, :]
        if hour_bucket is not None:
            rel += self.hour_effect.astype(np.float32)[:, self.item_cat1[items]][hour_bucket]
        return rel


def _scanned(cfg: SyntheticConfig) -> bool:
    """True when retrieval and history score every item (catalogues up to max_scan_items)."""
    return cfg.items <= cfg.max_scan_items


def _catalogue_sample(cfg: SyntheticConfig, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """``size`` (default ``scan_sample``) distinct item ids, uniform (no per-item pass)."""
    return np.sort(rng.choice(cfg.items, size=size or cfg.scan_sample, replace=False))


def _day_start_ms(day: _dt.date, utc_offset_hours: int) -> int:
    """Epoch ms of local midnight of ``day`` in UTC+offset (independent of the machine's zone)."""
    return (day.toordinal() - _dt.date(1970, 1, 1).toordinal()) * _DAY_MS - utc_offset_hours * _HOUR_MS


def _build_world(cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
    U, I, A, d = cfg.users, cfg.items, cfg.num_authors, cfg.latent_dim
    c1, c2 = cfg.categories_level_one, cfg.categories_level_two

    # users
    user_device = rng.permutation(U).astype(np.int64)
    user_age = rng.integers(0, cfg.ages, U)
    user_gender = rng.integers(0, cfg.genders, U)
    user_province = rng.integers(0, cfg.provinces, U)
    demo_age = rng.standard_normal((cfg.ages, d))
    demo_gender = rng.standard_normal((cfg.genders, d))
    user_pref = 0.5 * demo_age[user_age] + 0.5 * demo_gender[user_gender] + rng.standard_normal((U, d))
    activity = rng.lognormal(0.0, 1.0, U)
    user_activity = activity / activity.sum()

    # items: every cat1 gets at least one cat2; authors mostly publish in a home cat2
    cat2_parent = rng.permutation(np.arange(c2) % c1).astype(np.int64)
    author_home = rng.integers(0, c2, A)
    author_weight = rng.lognormal(0.0, 1.0, A)
    item_author = rng.choice(A, size=I, p=author_weight / author_weight.sum()).astype(np.int64)
    at_home = rng.random(I) < 0.8
    item_cat2 = np.where(at_home, author_home[item_author], rng.integers(0, c2, I)).astype(np.int64)
    item_cat1 = cat2_parent[item_cat2]
    type_weight = 0.5 ** np.arange(cfg.upload_types)
    item_upload_type = rng.choice(cfg.upload_types, size=I, p=type_weight / type_weight.sum()).astype(np.int64)
    first_s = _day_start_ms(cfg.first_day, cfg.utc_offset_hours) // 1000
    lo, hi = _UPLOAD_WINDOW_DAYS
    item_upload_ts = first_s - rng.integers(lo * 86_400, hi * 86_400, I)
    item_duration = np.clip(np.round(rng.lognormal(np.log(30_000.0), 0.8, I)), 3_000, 600_000).astype(np.int64)

    emb1, emb2, emb_a = rng.standard_normal((c1, d)), rng.standard_normal((c2, d)), rng.standard_normal((A, d))
    # In row blocks (the noise is drawn block after block: the same stream as one draw), kept
    # as float32 for large catalogues (relevance is computed in float32 either way).
    dtype = np.float64 if _scanned(cfg) else np.float32
    item_latent = np.empty((I, d), dtype)
    e1, e2, ea = (0.8 * emb1).astype(dtype), (0.8 * emb2).astype(dtype), (0.6 * emb_a).astype(dtype)
    block = 1 << 20
    for s in range(0, I, block):
        e = min(I, s + block)
        if _scanned(cfg):
            noise = 0.5 * rng.standard_normal((e - s, d))
        else:
            noise = rng.standard_normal((e - s, d), dtype=np.float32)
            noise *= np.float32(0.5)
        out = item_latent[s:e]
        np.take(e1, item_cat1[s:e], axis=0, out=out)
        out += e2[item_cat2[s:e]]
        out += ea[item_author[s:e]]
        out += noise
    type_effect = 0.3 * rng.standard_normal(cfg.upload_types)
    item_bias = 0.3 * rng.standard_normal(I) + type_effect[item_upload_type]
    hour_effect = 0.3 * rng.standard_normal((_HOUR_BUCKETS, c1))
    sample = user_pref[: min(U, 256)] @ item_latent[: min(I, 2048)].astype(np.float64).T
    dot_scale = float(sample.std()) or 1.0

    world = _World(user_device, user_age, user_gender, user_province, user_pref, user_activity,
                   item_author, item_cat1, item_cat2, item_upload_type, item_upload_ts, item_duration,
                   item_latent, item_bias, hour_effect, dot_scale)
    _build_history(world, cfg, rng)
    return world


def _build_history(world: _World, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
    """Give every user a sorted timeline of effective views, sampled by affinity.

    Columns ``[0, 50)`` are views before the first day (new users fill only some of them),
    the remaining ``10 * num_days`` are views during the period. An unused slot gets time
    int64-max, so after sorting it sits at the end and never precedes a request.
    """
    U, I = cfg.users, cfg.items
    n_during = _VIEWS_PER_DAY * cfg.num_days
    H = SEQ_LEN + n_during
    start_ms = _day_start_ms(cfg.first_day, cfg.utc_offset_hours)
    end_ms = start_ms + cfg.num_days * _DAY_MS
    never = np.iinfo(np.int64).max

    new_user = rng.random(U) < cfg.new_user_rate
    n_before = np.where(new_user, rng.integers(0, SEQ_LEN, U), SEQ_LEN)
    before = start_ms - rng.integers(1, _HISTORY_WINDOW_DAYS * _DAY_MS, (U, SEQ_LEN))
    before = np.where(np.arange(SEQ_LEN)[None, :] < n_before[:, None], before, never)
    during = rng.integers(start_ms, end_ms, (U, n_during))
    during = np.where(rng.random((U, n_during)) < 0.5, during, never)  # about 5 views a day
    times = np.concatenate([before, during], axis=1)

    # items by affinity: inverse-CDF sampling for all users at once (rows offset by their index)
    items = np.empty((U, H), np.int64)
    scanned = _scanned(cfg)
    width = I if scanned else _HISTORY_SAMPLE
    chunk = max(1, _CHUNK_CELLS // width)
    for s in range(0, U, chunk):
        users = np.arange(s, min(U, s + chunk))
        if scanned:
            logits = world.relevance_all(users, None).astype(np.float64) / _HISTORY_TEMPERATURE
        else:  # a large catalogue: this group of users draws from a uniform sample of it
            sample = _catalogue_sample(cfg, rng, _HISTORY_SAMPLE)
            logits = world.relevance_of(users, sample, None).astype(np.float64) / _HISTORY_TEMPERATURE
        weight = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(weight, axis=1)
        cdf /= cdf[:, -1:]
        offset = np.arange(len(users))[:, None]
        pos = np.searchsorted((cdf + offset).ravel(), (rng.random((len(users), H)) + offset).ravel())
        picked = np.minimum(pos.reshape(len(users), H) - offset * width, width - 1)
        items[users] = picked if scanned else sample[picked]

    order = np.argsort(times, axis=1, kind="stable")
    world.hist_time = np.take_along_axis(times, order, axis=1)
    world.hist_item = np.take_along_axis(items, order, axis=1)
    frac = rng.uniform(0.5, 1.5, (U, H))
    world.hist_play = np.round(world.item_duration[world.hist_item] * frac).astype(np.int64)
    base = cfg.num_days * cfg.requests_per_day
    world.hist_request = base + np.arange(U * H, dtype=np.int64).reshape(U, H)


# ----------------------------------------------------------------------------- one day
#: Requests simulated at a time. A bigger day is simulated in consecutive parts of this many
#: requests (in time order), each part's all_stage rows written before the next part is
#: simulated, so the simulation's working memory is one part's; only the two dicts, pickled
#: at the end, grow with the day. A 250,000-request day peaked at 14,521 MiB in one part and
#: at 5,511 MiB in parts (docs/data.md). Days up to this size are one part and come out
#: exactly as before parts existed.
DAY_PART_REQUESTS = 20_000


@dataclass
class _DayPart:
    """A run of consecutive requests of a day: their all_stage rows and their entries of the
    two pickled dicts."""

    all_stage: pa.Table
    request_dict: dict[int, dict[str, np.ndarray]]
    seq_dict: dict[int, np.ndarray]


def _row_shuffle(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle each row of a 2-D array independently."""
    return np.take_along_axis(a, np.argsort(rng.random(a.shape), axis=1), axis=1)


def _simulate_day(world: _World, cfg: SyntheticConfig, day_index: int, rng: np.random.Generator) -> Iterator[_DayPart]:
    """The day's requests (users, times, ids) at once, then the cascade of each run of
    :data:`DAY_PART_REQUESTS` of them in time order, one :class:`_DayPart` at a time (the
    random draws follow in that order, so a one-part day draws exactly what it always did)."""
    R = cfg.requests_per_day
    day = cfg.first_day + _dt.timedelta(days=day_index)

    # requests, in time order
    users = rng.choice(cfg.users, size=R, p=world.user_activity)
    hour = rng.choice(24, size=R, p=_HOUR_WEIGHTS)
    offset = hour * _HOUR_MS + rng.integers(0, _HOUR_MS, R)
    order = np.argsort(offset, kind="stable")
    users, hour, offset = users[order], hour[order], offset[order]
    t_ms = _day_start_ms(day, cfg.utc_offset_hours) + offset
    bucket = hour // (24 // _HOUR_BUCKETS)
    request_id = day_index * R + rng.permutation(R).astype(np.int64)
    for s in range(0, R, DAY_PART_REQUESTS):
        e = min(R, s + DAY_PART_REQUESTS)
        yield _simulate_part(world, cfg, rng, users[s:e], bucket[s:e], t_ms[s:e], request_id[s:e])


@dataclass
class _Cascade:
    """One part's simulated cascade: the retrieval pool and each later stage's ranking of its
    input, as pool slots (column indices into ``pool``), best first.

    Kept together because flags, indices, stored lists and feedback all read the same
    rankings; the arrays are the ones the stages produced (views, no copies)."""

    pool: np.ndarray      # [R, P] item ids, in random order
    rel: np.ndarray       # [R, P] float64 relevance of the pool items
    pre: np.ndarray       # [R, P] pre-rank's input (the pool) sorted by its score
    coarse: np.ndarray    # [R, prerank_keep] coarse's input sorted by its score
    rank: np.ndarray      # [R, coarse_keep]
    rerank: np.ndarray    # [R, rank_keep]
    n_shown: np.ndarray   # [R] how many of the rerank top are shown (1..max_shown)


def _simulate_part(world: _World, cfg: SyntheticConfig, rng: np.random.Generator, users: np.ndarray,
                   bucket: np.ndarray, t_ms: np.ndarray, request_id: np.ndarray) -> _DayPart:
    """The cascade, feedback, stored lists and sequences of the requests given (time order).

    The phases draw from ``rng`` in this fixed order (retrieval, stage noise, shown counts,
    feedback, list shuffles, stored counts, empty-label omission): the order is part of the
    output, since the same configuration must give byte-identical files."""
    pool, rel = _retrieve_pool(world, cfg, rng, users, bucket)
    cascade = _rank_stages(cfg, pool, rel, rng)
    flags, rank_index, rerank_index = _slot_outcomes(cfg, cascade)
    feedback = _feedback(world, pool, rel, rng)
    lists = _stored_lists(cfg, cascade, rng)
    counts = _stored_counts(cfg, lists, cascade.n_shown, rng)
    stored = _stored_slots(lists, counts, pool.shape)
    viewed = feedback["effective_view"] & (flags["realshow"] == 1)   # only shown items have feedback
    request_dict = _request_dict(world, pool, lists, counts, viewed, request_id, rng)
    seq = _sequences(world, users, t_ms)
    seq_dict = {rid: np.ascontiguousarray(seq[r]) for r, rid in enumerate(request_id.tolist())}
    table = _all_stage_table(world, cfg, stored, pool, users, t_ms, request_id, flags, rank_index,
                             rerank_index, feedback)
    return _DayPart(table, request_dict, seq_dict)


def _retrieve_pool(world: _World, cfg: SyntheticConfig, rng: np.random.Generator, users: np.ndarray,
                   bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval: each request's pool is the top ``pool_size`` items by a noisy relevance,
    returned as (item ids [R, P], their float64 relevance [R, P]) in a random column order.

    Chunked so the [requests, items] relevance matrix stays about ``_CHUNK_CELLS`` cells; a
    large catalogue scores a uniform sample per chunk instead of every item."""
    R, P = len(users), cfg.pool_size
    pool = np.empty((R, P), np.int64)
    rel = np.empty((R, P), np.float64)                              # relevance of the pool items
    scanned = _scanned(cfg)
    width = cfg.items if scanned else cfg.scan_sample
    chunk = max(1, _CHUNK_CELLS // width)
    for s in range(0, R, chunk):
        e = min(R, s + chunk)
        if scanned:
            rel_all = world.relevance_all(users[s:e], bucket[s:e])
        else:  # a large catalogue: this group of requests retrieves from a uniform sample of it
            sample = _catalogue_sample(cfg, rng)
            rel_all = world.relevance_of(users[s:e], sample, bucket[s:e])
        noisy = rel_all + np.float32(cfg.stage_noise[0]) * rng.standard_normal(rel_all.shape, dtype=np.float32)
        top = np.argpartition(noisy, width - P, axis=1)[:, width - P:]
        rel[s:e] = np.take_along_axis(rel_all, top, axis=1)
        pool[s:e] = top if scanned else sample[top]
    shuffle = np.argsort(rng.random((R, P)), axis=1)
    return np.take_along_axis(pool, shuffle, axis=1), np.take_along_axis(rel, shuffle, axis=1)


def _rank_stages(cfg: SyntheticConfig, pool: np.ndarray, rel: np.ndarray, rng: np.random.Generator) -> _Cascade:
    """pre-rank -> coarse -> rank -> rerank: each stage sorts its input by ``rel`` plus its
    own noise and passes its top ``keep`` on; then how many rerank items are shown."""
    R, P = pool.shape
    keeps = (cfg.prerank_keep, cfg.coarse_keep, cfg.rank_keep, cfg.rerank_keep)
    ranked: list[np.ndarray] = []
    current = np.broadcast_to(np.arange(P), (R, P))
    for stage, keep in enumerate(keeps):
        noise = cfg.stage_noise[stage + 1] * rng.standard_normal(current.shape)
        score = np.take_along_axis(rel, current, axis=1) + noise
        current = np.take_along_axis(current, np.argsort(-score, axis=1, kind="stable"), axis=1)
        ranked.append(current)
        current = current[:, :keep]
    pre, coarse, rank, rerank = ranked
    n_shown = rng.integers(1, cfg.max_shown + 1, R)
    return _Cascade(pool, rel, pre, coarse, rank, rerank, n_shown)


def _slot_outcomes(cfg: SyntheticConfig,
                   cascade: _Cascade) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per pool slot, the true cascade outcome: the 0/1 stage flags ({label: int8 [R, P]}),
    rank_index and rerank_index (int64 [R, P]; 0 where the item did not reach the stage)."""
    R, P = cascade.pool.shape
    pre, coarse, rank, rerank = cascade.pre, cascade.coarse, cascade.rank, cascade.rerank
    rows_r = np.arange(R)[:, None]
    flags = {name: np.zeros((R, P), np.int8) for name in FLAG_COLUMNS}
    flags["prerank_neg"][rows_r, pre[:, cfg.prerank_keep:]] = 1
    flags["coarse_neg"][rows_r, coarse[:, cfg.coarse_keep:]] = 1
    flags["rank_neg"][rows_r, rank[:, cfg.rank_keep:]] = 1
    flags["rank_pos"][rows_r, rank[:, :cfg.rank_keep]] = 1
    flags["rerank_neg"][rows_r, rerank[:, cfg.rerank_keep:]] = 1
    flags["rerank_pos"][rows_r, rerank[:, :cfg.rerank_keep]] = 1
    shown_mask = np.arange(cfg.rerank_keep)[None, :] < cascade.n_shown[:, None]
    np.put_along_axis(flags["realshow"], rerank[:, :cfg.rerank_keep], shown_mask.astype(np.int8), axis=1)
    rank_index = np.zeros((R, P), np.int64)
    np.put_along_axis(rank_index, rank[:, :cfg.rank_keep],
                      np.broadcast_to(np.arange(cfg.rank_keep), (R, cfg.rank_keep)), axis=1)
    rerank_index = np.zeros((R, P), np.int64)
    np.put_along_axis(rerank_index, rerank[:, :cfg.rerank_keep],
                      np.broadcast_to(np.arange(cfg.rerank_keep), (R, cfg.rerank_keep)), axis=1)
    return flags, rank_index, rerank_index


def _stored_lists(cfg: SyntheticConfig, cascade: _Cascade, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each label's pool slots in the order request_id_dict stores them: positives in index
    order (so the first rows have index 0, 1, ...), negatives shuffled per request."""
    pre, coarse, rank, rerank = cascade.pre, cascade.coarse, cascade.rank, cascade.rerank
    return {
        "realshow": rerank[:, :cfg.max_shown],
        "rerank_pos": rerank[:, :cfg.rerank_keep],
        "rerank_neg": _row_shuffle(rerank[:, cfg.rerank_keep:], rng),
        "rank_pos": rank[:, :cfg.rank_keep],
        "rank_neg": _row_shuffle(rank[:, cfg.rank_keep:], rng),
        "coarse_neg": _row_shuffle(coarse[:, cfg.coarse_keep:], rng),
        "prerank_neg": _row_shuffle(pre[:, cfg.prerank_keep:], rng),
    }


def _stored_slots(lists: dict[str, np.ndarray], counts: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """[R, P] bool: the pool slots some label stores (the first ``counts`` of its list);
    all_stage has a row for exactly these."""
    stored = np.zeros(shape, bool)
    for label in STAGE_LABELS:
        valid = np.arange(lists[label].shape[1])[None, :] < counts[label][:, None]
        r_idx, j_idx = np.nonzero(valid)
        stored[r_idx, lists[label][r_idx, j_idx]] = True
    return stored


def _request_dict(world: _World, pool: np.ndarray, lists: dict[str, np.ndarray], counts: dict[str, np.ndarray],
                  viewed: np.ndarray, request_id: np.ndarray,
                  rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    """request_id_dict's entries: per request, each label's first ``counts`` items as
    [n, 8] rows (column 7 = effective_view); an empty label is left out half the time."""
    R = len(request_id)
    omit_empty = rng.random((R, len(STAGE_LABELS))) < 0.5
    label_arrays = {}
    for label in STAGE_LABELS:
        slots = lists[label][:, : int(counts[label].max(initial=0))]
        arr = _item_rows(world, np.take_along_axis(pool, slots, axis=1))  # [R, n, 8], column 7 below
        arr[..., 7] = np.take_along_axis(viewed, slots, axis=1)
        label_arrays[label] = arr
    request_dict: dict[int, dict[str, np.ndarray]] = {}
    for r, rid in enumerate(request_id.tolist()):  # building the per-request dicts is the only per-request loop
        entry: dict[str, np.ndarray] = {}
        for k, label in enumerate(STAGE_LABELS):
            n = int(counts[label][r])
            if n == 0 and omit_empty[r, k]:
                continue
            entry[label] = np.ascontiguousarray(label_arrays[label][r, :n])
        request_dict[rid] = entry
    return request_dict


def _stored_counts(cfg: SyntheticConfig, lists: dict[str, np.ndarray], n_shown: np.ndarray,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """How many items of each label a request stores (short requests get 0-9 in some labels)."""
    R = len(n_shown)
    short = rng.random(R) < cfg.short_request_rate
    counts: dict[str, np.ndarray] = {}
    for label in STAGE_LABELS:
        available = n_shown if label == "realshow" else np.full(R, lists[label].shape[1])
        n = rng.integers(cfg.stored_min, cfg.stored_max + 1, R)
        cut = short & (rng.random(R) < 0.5)
        n = np.where(cut, rng.integers(0, 10, R), n)
        counts[label] = np.minimum(n, available).astype(np.int64)
    # every request keeps at least one stored item, so it has rows in all_stage
    empty = sum(counts.values()) == 0
    counts["prerank_neg"] = np.where(empty, 1, counts["prerank_neg"])
    return counts


def _item_rows(world: _World, ids: np.ndarray) -> np.ndarray:
    """[..., 8] int64 features of the items ``ids`` in request_id_dict column order
    (effective_view = 0), gathered per column: no [items, 8] table of the whole catalogue."""
    return np.stack([ids.astype(np.int64), world.item_author[ids], world.item_duration[ids], world.item_cat2[ids],
                     world.item_upload_type[ids], world.item_upload_ts[ids], world.item_cat1[ids],
                     np.zeros(ids.shape, np.int64)], axis=-1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _feedback(world: _World, pool: np.ndarray, rel: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Feedback for every pool slot; only realshow slots are written.

    Shown items have relevance of about 2.5-4. The offsets put an effective view at about
    1/2 of exposures and a like at a few percent, with follow, forward and comment rarer.
    More relevant items get more engagement.
    """
    shape = rel.shape
    effective = rng.random(shape) < _sigmoid(1.5 * (rel - 3.0))
    frac = np.where(effective, rng.uniform(0.5, 1.5, shape), rng.uniform(0.0, 0.5, shape))
    return {
        "playing_time": np.round(world.item_duration[pool] * frac).astype(np.int64),
        "effective_view": effective,
        "long_view": effective & (frac >= 0.9),
        "like": rng.random(shape) < _sigmoid(rel - 6.5),
        "follow": rng.random(shape) < _sigmoid(rel - 8.0),
        "forward": rng.random(shape) < _sigmoid(rel - 8.5),
        "comment": rng.random(shape) < _sigmoid(rel - 8.0),
    }


def _sequences(world: _World, users: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    """[R, 50, 10] last 50 views strictly before each request, left-padded with zero rows."""
    times = world.hist_time[users]                                   # [R, H]
    seen = (times < t_ms[:, None]).sum(axis=1)
    idx = seen[:, None] - SEQ_LEN + np.arange(SEQ_LEN)[None, :]      # ascending, invalid first
    valid = idx >= 0
    idx = np.maximum(idx, 0)
    item = np.take_along_axis(world.hist_item[users], idx, axis=1)
    cols = [item, world.item_author[item], world.item_cat2[item], world.item_cat1[item],
            world.item_upload_type[item], world.item_upload_ts[item], world.item_duration[item],
            np.take_along_axis(times, idx, axis=1),
            np.take_along_axis(world.hist_play[users], idx, axis=1),
            np.take_along_axis(world.hist_request[users], idx, axis=1)]
    seq = np.stack(cols, axis=2)
    seq[~valid] = 0
    return seq.astype(np.int64, copy=False)


def _all_stage_table(world: _World, cfg: SyntheticConfig, stored: np.ndarray, pool: np.ndarray,
                     users: np.ndarray, t_ms: np.ndarray, request_id: np.ndarray,
                     flags: dict[str, np.ndarray], rank_index: np.ndarray, rerank_index: np.ndarray,
                     feedback: dict[str, np.ndarray]) -> pa.Table:
    """One row per stored (request, item); feedback columns null except on realshow rows."""
    r, p = np.nonzero(stored)                 # request-major; pool slots are in random order
    item, user = pool[r, p], users[r]
    cols: dict[str, Any] = {
        "request_id": request_id[r], "request_timestamp": t_ms[r], "user_id": user,
        "device_id": world.user_device[user], "age": world.user_age[user], "gender": world.user_gender[user],
        "province": world.user_province[user], "video_id": item, "author_id": world.item_author[item],
        "category_level_one": world.item_cat1[item], "category_level_two": world.item_cat2[item],
        "upload_type": world.item_upload_type[item], "upload_timestamp": world.item_upload_ts[item],
        "duration": world.item_duration[item],
    }
    for name in FLAG_COLUMNS:
        cols[name] = flags[name][r, p]
    cols["rank_index"], cols["rerank_index"] = rank_index[r, p], rerank_index[r, p]
    arrays = [pa.array(np.asarray(cols[name], dtype=np.int64), type=pa.int64())
              for name in ALL_STAGE_COLUMNS[: -len(FEEDBACK_COLUMNS)]]
    not_shown = cols["realshow"] == 0
    arrays += [pa.array(feedback[name][r, p].astype(np.int64), type=pa.int64(), mask=not_shown)
               for name in FEEDBACK_COLUMNS]
    return pa.Table.from_arrays(arrays, names=list(ALL_STAGE_COLUMNS))


def _video_info_table(world: _World) -> pa.Table:
    n = len(world.item_author)
    cols = {"video_id": np.arange(n, dtype=np.int64), "author_id": world.item_author,
            "category_level_one": world.item_cat1, "category_level_two": world.item_cat2,
            "upload_type": world.item_upload_type, "upload_timestamp": world.item_upload_ts,
            "duration": world.item_duration}
    return pa.table({k: pa.array(v, type=pa.int64()) for k, v in cols.items()})


# ----------------------------------------------------------------------------- writing
#: Rows per record batch of the Feather files (pyarrow.feather.write_feather's own default:
#: a one-part day's files are the bytes write_feather wrote before days came in parts).
_FEATHER_BATCH_ROWS = 64 * 1024
_FEATHER_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def _write_feather(path: Path, table: pa.Table) -> None:
    with atomic_open(path, "wb") as fh:
        feather.write_feather(table, fh, compression="zstd")


def _write_pickle(path: Path, obj: Any) -> None:
    """Pickle ``obj`` straight into the file (protocol 4; the same bytes as pickle.dumps)."""
    with atomic_open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def _write_day(out: Path, day: str, parts: Iterable[_DayPart],
               on_part: Callable[[int], Any] | None = None) -> int:
    """Write one day's four files from its parts; returns its all_stage rows.
    ``on_part(requests)`` is called after each part is written (progress).

    all_stage and realshow are Feather (Arrow IPC) files written part by part; the two
    dicts take every part's entries and are pickled once at the end (each is one pickle).
    """
    all_stage_path, realshow_path, request_path, seq_path = _day_files(out, day)
    rows = 0
    request_dict: dict[int, dict[str, np.ndarray]] = {}
    seq_dict: dict[int, np.ndarray] = {}
    with contextlib.ExitStack() as files:
        writers: list[pa.ipc.RecordBatchFileWriter] = []
        for part in parts:
            if not writers:
                for path in (all_stage_path, realshow_path):
                    fh = files.enter_context(atomic_open(path, "wb"))
                    writers.append(files.enter_context(
                        pa.ipc.new_file(fh, part.all_stage.schema, options=_FEATHER_OPTIONS)))
            shown = part.all_stage.filter(pc.equal(part.all_stage["realshow"], 1))
            for writer, table in zip(writers, (part.all_stage, shown)):
                writer.write_table(table, max_chunksize=_FEATHER_BATCH_ROWS)
            rows += part.all_stage.num_rows
            request_dict.update(part.request_dict)
            seq_dict.update(part.seq_dict)
            if on_part is not None:
                on_part(len(part.seq_dict))
            del part, shown
    _write_pickle(request_path, request_dict)
    _write_pickle(seq_path, seq_dict)
    return rows


_LATER_FIELDS = ("max_scan_items", "scan_sample")


def _manifest(cfg: SyntheticConfig) -> dict[str, Any]:
    conf = dataclasses.asdict(cfg)
    conf["stage_noise"] = list(conf["stage_noise"])
    # Fields added later are recorded only when they differ from their defaults, so folders
    # written before they existed still match their own configuration.
    for name in _LATER_FIELDS:
        if conf[name] == SyntheticConfig.__dataclass_fields__[name].default:
            del conf[name]
    return {"generator": "lcron.data.synthetic", "format": "recflow", "config": conf}


def _check_out_dir(out: Path, manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Refuse to write over real data or over synthetic data made with another configuration
    (the output protocol's claim on the manifest; there is no --overwrite here, and no lock, as
    before: the folder is removed by hand).

    Returns the days a stopped run of the same configuration completed, whose files still
    match the sha256 it recorded (``{day: {file: sha256}}``): those are kept, not redone.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder; choose a folder for the synthetic data")
    path = out / MANIFEST_NAME
    present = [d for d in RECFLOW_SUBDIRS if (out / d).exists()]
    if present and not path.exists():  # the generator has no --overwrite: its own words, not refuse_foreign's
        raise OutputExistsError(
            f"{out}: already holds RecFlow-style data ({', '.join(present)}) that this generator did not write "
            f"(no {MANIFEST_NAME}); refusing to overwrite it - choose an empty folder")

    def refusal(old: dict[str, Any]) -> str:
        old_conf = old.get("config") if isinstance(old.get("config"), dict) else {}
        diff = sorted(k for k in manifest["config"] if old_conf.get(k) != manifest["config"][k])
        return (f"{out}: holds synthetic data made with a different configuration ({path}; differing fields: "
                f"{', '.join(diff) or 'unreadable manifest'}); remove the folder or choose another one")

    claim = StepOutput(out, "", None, lambda folder: True, "").claim(
        MANIFEST_NAME, manifest, None, False, refusal=refusal,
        same=lambda old: all(old.get(k) == manifest[k] for k in manifest))
    if claim.same and claim.previous is not None and claim.previous.get("complete") is False:
        return _verified_days(out, claim.previous)
    return {}


def _day_files(out: Path, day: str) -> list[Path]:
    """A day's four files: all_stage, realshow, request_id_dict, seq_effective_50_dict."""
    return [out / "all_stage" / f"{day}.feather", out / "realshow" / f"{day}.feather",
            out / "request_id_dict" / f"{day}.pkl", out / "seq_effective_50_dict" / f"{day}.pkl"]


def _day_hashes(out: Path, day: str) -> dict[str, str]:
    return {f.relative_to(out).as_posix(): file_sha256(f) for f in _day_files(out, day)}


def _verified_days(out: Path, state: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The recorded days of a stopped run whose four files exist with their recorded hashes."""
    kept: dict[str, dict[str, str]] = {}
    recorded = state.get("days_done")
    for day, hashes in (recorded.items() if isinstance(recorded, dict) else ()):
        files = _day_files(out, str(day))
        names = sorted(f.relative_to(out).as_posix() for f in files)
        if (isinstance(hashes, dict) and sorted(hashes) == names and all(f.is_file() for f in files)
                and _day_hashes(out, str(day)) == hashes):
            kept[str(day)] = hashes
    return kept


def _remove_stale_temporaries(out: Path, days: Iterable[str]) -> None:
    """Temporary files a killed run left beside the day files it was writing (atomic_open's
    ``.NAME.*.tmp``); only names of files this generator writes."""
    for day in days:
        for f in _day_files(out, day):
            if f.parent.is_dir():
                for tmp in f.parent.glob(f".{f.name}.*.tmp"):
                    tmp.unlink(missing_ok=True)


def generate_from_config(out_dir: str | Path, config: SyntheticConfig, *, progress: bool = True,
                         workers: int | None = 1) -> Path:
    """Write the RecFlow layout for ``config`` under ``out_dir`` and return the folder.

    Calling it again with the same configuration rewrites identical files. A folder that
    holds other data raises OutputExistsError. A stopped run resumes: the manifest is
    written first (``complete: false``) and records each finished day's file hashes, so a
    rerun with the same configuration keeps the days whose files still match and
    simulates the rest.

    ``workers`` > 1 simulates that many days at once in worker processes (``None``: as many
    as :func:`default_workers` allows). Every day draws from its own seed and reads the
    hidden world only, so the files are byte-identical to a one-process run; each worker
    holds a copy of the world and one day (~23 KiB per request), which the memory check
    counts. Progress moves per 20,000-request part of a day, in requests.
    """
    n_workers = default_workers(config) if workers is None else int(workers)
    if n_workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers!r}")
    n_workers = min(n_workers, config.num_days)
    config.validate(day_copies=n_workers)
    out = Path(out_dir)
    manifest = _manifest(config)
    done = _check_out_dir(out, manifest)
    todo = [d for d, day in enumerate(config.days) if day not in done]
    n_workers = max(1, min(n_workers, len(todo)))
    _remove_stale_temporaries(out, config.days)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST_NAME, {**manifest, "complete": False, "days_done": done})
    seeds = np.random.SeedSequence(config.seed).spawn(config.num_days + 1)
    if done and progress:
        print(f"synthetic RecFlow: kept {len(done)} complete day(s) of a stopped run: {', '.join(sorted(done))}",
              file=sys.stderr, flush=True)
    with Progress(len(todo) * config.requests_per_day, "synthetic RecFlow", unit="req", enabled=progress) as bar:
        world = _build_world(config, np.random.default_rng(seeds[0]))

        def finished(day: str, hashes: dict[str, str]) -> None:
            done[day] = hashes
            write_json(out / MANIFEST_NAME, {**manifest, "complete": False, "days_done": done})
            bar.postfix = f"{len(done)}/{config.num_days} days"

        if n_workers == 1:
            for d in todo:
                day = config.days[d]
                _write_day(out, day, _simulate_day(world, config, d, np.random.default_rng(seeds[d + 1])),
                           on_part=bar.update)
                finished(day, _day_hashes(out, day))
        else:
            _simulate_in_workers(world, config, out, todo, seeds, n_workers, bar, finished)
    counts = config.id_counts()
    if config.published_spellings:
        counts = {PUBLISHED_SPELLINGS.get(k, k): v for k, v in counts.items()}
    _write_pickle(out / "others" / "id_cnt.pkl", counts)
    _write_feather(out / "others" / "realshow_video_info.feather", _video_info_table(world))
    write_json(out / MANIFEST_NAME, manifest)
    return out


def _simulate_in_workers(world: Any, config: SyntheticConfig, out: Path, todo: list[int], seeds: Any,
                         n_workers: int, bar: Progress, finished: Callable[[str, dict[str, str]], None]) -> None:
    """Simulate and write the days ``todo`` in ``n_workers`` worker processes, calling
    ``finished(day, hashes)`` as each ends.

    spawn, not fork: the caller may hold threads (torch, BLAS) that a forked child would
    inherit mid-lock; the world travels once per worker. Workers report each part's requests
    through a queue, so progress moves within days."""
    context = multiprocessing.get_context("spawn")
    parts_done = context.Queue()
    with _worker_threads(max(1, usable_cpus() // n_workers)), \
            ProcessPoolExecutor(n_workers, mp_context=context, initializer=_init_day_worker,
                                initargs=(world, config, str(out), parts_done)) as pool:
        jobs = {pool.submit(_day_in_worker, d, seeds[d + 1]) for d in todo}
        while jobs:
            ended, jobs = wait(jobs, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(parts_done, bar)
            for job in ended:
                finished(*job.result())
        _drain(parts_done, bar)


def _drain(queue: Any, bar: Progress) -> None:
    """Count the parts the workers reported so far into the progress line."""
    while True:
        try:
            n = queue.get_nowait()
        except Empty:
            return
        bar.update(n)


#: Below this many requests a day, starting worker processes costs more than it saves.
PARALLEL_MIN_REQUESTS = 20_000


def default_workers(config: SyntheticConfig) -> int:
    """Days simulated at once by default: one per usable CPU (the container's quota), as
    many as memory holds (the parent's world, then a copy of the world and one day per
    worker), and 1 for small days."""
    if config.requests_per_day < PARALLEL_MIN_REQUESTS or config.num_days < 2:
        return 1
    n = min(config.num_days, usable_cpus())
    free = available_bytes()
    if free is not None:
        n = min(n, max(1, (free - config.world_bytes()) // config.worker_bytes()))
    return max(1, int(n))


_WORKER_STATE: dict[str, Any] = {}


@contextlib.contextmanager
def _worker_threads(threads: int) -> Iterator[None]:
    """Workers start with ``threads`` BLAS/OpenMP threads each (the CPUs shared out, not
    every worker with all of them), unless the user set the thread variables."""
    if any(os.environ.get(v) for v in THREAD_VARIABLES):
        yield
        return
    try:
        os.environ.update({v: str(threads) for v in THREAD_VARIABLES})
        yield
    finally:
        for v in THREAD_VARIABLES:
            os.environ.pop(v, None)


def _init_day_worker(world: _World, config: SyntheticConfig, out: str, parts_done: Any) -> None:
    _WORKER_STATE.update(world=world, config=config, out=Path(out), parts_done=parts_done)


def _day_in_worker(day_index: int, seed: np.random.SeedSequence) -> tuple[str, dict[str, str]]:
    """Simulate and write one day; returns the day and its files' hashes (computed here, in parallel)."""
    world, config, out = _WORKER_STATE["world"], _WORKER_STATE["config"], _WORKER_STATE["out"]
    day = config.days[day_index]
    _write_day(out, day, _simulate_day(world, config, day_index, np.random.default_rng(seed)),
               on_part=_WORKER_STATE["parts_done"].put)
    return day, _day_hashes(out, day)


def generate(out_dir: str | Path, *, num_days: int = SYNTHETIC.num_days, start_date: str = SYNTHETIC.start_date,
             requests_per_day: int = SYNTHETIC.requests_per_day, users: int = SYNTHETIC.users,
             items: int = SYNTHETIC.items, seed: int = SYNTHETIC.seed,
             published_spellings: bool = True, progress: bool = True, workers: int | None = 1,
             authors: int | None = None) -> Path:
    """Write a synthetic RecFlow dataset (see the module docstring) and return ``out_dir``.

    The defaults (4 days x 2000 requests, 500 users, 5000 items) take a few seconds and
    are the product's embedded data source. ``items`` must be at least the pool size (300).
    """
    config = SyntheticConfig(num_days=num_days, start_date=start_date, requests_per_day=requests_per_day,
                             users=users, items=items, seed=seed, published_spellings=published_spellings,
                             authors=authors)
    return generate_from_config(out_dir, config, progress=progress, workers=workers)
