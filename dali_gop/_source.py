"""The ``external_source`` callback: one sample (a clip at one time point, every camera) per call.

Runs in DALI's worker processes (``parallel=True``, ``batch=False``): file I/O only. It opens the GOP
store lazily in each worker, asks the access pattern which sample comes at this position of the
epoch, asks the schedules (:mod:`dali_gop.schedule`) what the decoders should do with it, and
returns the bytes they need and the plan that tells them.
"""
from __future__ import annotations

import numpy as np

from dali_gop._dataset import Dataset
from dali_gop.patterns import AccessPattern, SampleSpec
from dali_gop.plan import RELEASE_FRAMES
from dali_gop.schedule import DecodeAhead, StreamWindows, sample_key
from dali_gop._store import GopStore, ReadRequest

#: what the callback returns, in this order (DALI's external_source with num_outputs=len(...))
SOURCE_OUTPUTS = ("data", "plan", "frame_idx", "clip", "camera")


def _allocated(nbytes: int) -> int:
    """What torch's caching allocator takes for an allocation of ``nbytes``: 2 MiB steps from
    1 MiB on, 512 B steps below."""
    step = 2 << 20 if nbytes > 1 << 20 else 512
    return -(-nbytes // step) * step


class GopSource:
    """Picklable callable for ``fn.external_source(parallel=True, batch=False)``.

    Returns ``(data, plan, frame_idx, clip, camera)``: the GOP bytes of every camera back to back,
    the int64 decode plan, the sample's frame indices (T,), the clip's index in
    ``dataset.clips`` (1,), and the camera indices (C,).

    With ``stream_decoding`` and a pattern that assigns stream slots, each GOP a slot walks through
    is sent once per camera, about ``stream_lead`` steps of the slot before the slot reaches it,
    so the decoder has it decoded by then; later samples in that GOP carry no bytes
    (:class:`dali_gop.schedule.StreamWindows`). With ``decode_ahead``, plain samples bring the
    bytes of the sample that many batches on (:class:`dali_gop.schedule.DecodeAhead`).
    ``last_batch_policy`` is the iterator's: it decides how the shard's last batch is made up
    (:meth:`dali_gop.patterns.AccessPattern.epoch_samples`).
    """

    def __init__(self, dataset: Dataset, pattern: AccessPattern, *, batch_size: int, seed: int = 0,
                 shard_id: int = 0, num_shards: int = 1, fix_gop_size: int | None = None,
                 verify_checksums: bool = False, stream_decoding: bool = True,
                 persistent_index: bool = True, stream_lead: int = 30, decode_ahead: int = 0,
                 last_batch_policy: str = "PARTIAL"):
        self.dataset = dataset
        self.pattern = pattern
        self.batch_size = batch_size
        self.seed = seed
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.fix_gop_size = fix_gop_size
        self.verify_checksums = verify_checksums
        self.stream_decoding = stream_decoding and not fix_gop_size
        self.persistent_index = persistent_index
        self.stream_lead = stream_lead
        self.decode_ahead = decode_ahead
        self.last_batch_policy = last_batch_policy
        self._clip_index = {clip: i for i, clip in enumerate(dataset.clips)}
        self._store: GopStore | None = None
        self._epochs: dict[int, list[SampleSpec]] = {}
        self._current_epoch: int | None = None
        self._make_schedules()

    def _make_schedules(self) -> None:
        self.windows = StreamWindows(self.samples, self._gop_start, batch_size=self.batch_size,
                                     lead=self.stream_lead)
        self.ahead = DecodeAhead(self.samples, batch_size=self.batch_size,
                                 batches=self.decode_ahead, streams=self._streams)

    def __getstate__(self):
        # workers rebuild the store, the epochs' sample lists and the schedules' memos themselves
        state = {**self.__dict__, "_store": None, "_epochs": {}, "_current_epoch": None}
        del state["windows"], state["ahead"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._make_schedules()

    def _shard(self, epoch: int) -> dict:
        return dict(epoch=epoch, seed=self.seed, shard_id=self.shard_id,
                    num_shards=self.num_shards, batch_size=self.batch_size,
                    last_batch_policy=self.last_batch_policy)

    def shard_size(self, epoch: int = 0) -> int:
        """Samples the iterator counts in ``epoch`` (its ``size``): this shard's real samples;
        under FILL also the fillers of whole batches that give this rank as many batches as the
        others (DALI fills a short last batch by itself, but never adds a batch)."""
        real = self.pattern.shard_size(self.dataset.clips, **self._shard(epoch))
        if self.last_batch_policy != "FILL":
            return real
        return len(self.samples(epoch)) - (-real % self.batch_size)

    def kept_gop_bytes(self, stream_lead: int | None = None) -> int:
        """At most how many bytes of decoded frames stream slots keep (NV12, as the nvdec backend
        keeps them), from the first clip's cameras, at ``stream_lead`` (default: this source's).

        A slot keeps the GOPs of its next ``lead`` steps, less the frames below its latest pick
        (let go in runs of :data:`dali_gop.plan.RELEASE_FRAMES`, which live on until the batch
        that let them go is done). At lead 0 that is at most one GOP and a run. Otherwise the
        picks cover (lead + 1) x span frames (span: the frames of one sample, first to last), and
        the GOPs around them add at most two runs, the rest of the last GOP, and the start of a
        GOP sent whole where an epoch's run of the slot starts mid-GOP; nor can it keep more GOPs
        than its picks reach, ceil(((lead + 1) x span - 1) / GOP) + 2 whole ones. 0 when no
        sample streams."""
        lead = self.stream_lead if stream_lead is None else stream_lead
        if not self.stream_pairs():
            return 0
        first = self.samples(0)[:self.batch_size]
        span = first[0].frames[-1] - first[0].frames[0] + 1
        clip = next(iter(self.dataset.clips))
        per_slot = 0
        for camera in self.dataset.cameras:
            index = self.store.index(f"{clip}/{camera}")
            counts = [g.count for g in index.gops]
            shortest, longest = min(counts[:-1] or counts), max(counts)  # a short last GOP: once
            whole = (-(-((lead + 1) * span - 1) // shortest) + 2) * longest
            frames = longest + RELEASE_FRAMES if lead == 0 else min(
                whole, (lead + 1) * span + 2 * RELEASE_FRAMES + 2 * (longest - 1))
            run = RELEASE_FRAMES * index.width * index.height * 3 // 2
            per_slot += -(-frames // RELEASE_FRAMES) * _allocated(run)
        return self.batch_size * per_slot

    def stream_pairs(self) -> int:
        """The (stream slot, camera) pairs of a batch: 0 where no sample streams."""
        first = self.samples(0)[:self.batch_size]
        if not self.stream_decoding or all(s.slot < 0 for s in first):
            return 0
        return self.batch_size * len(self.dataset.cameras)

    def streams_only(self) -> bool:
        """Whether every sample is a stream step for every camera (single frames of slots: never
        a window across GOPs, which is decoded plainly)."""
        first = self.samples(0)[:self.batch_size]
        return bool(self.stream_pairs()) and all(s.slot >= 0 and len(s.frames) == 1 for s in first)

    def reorders(self) -> bool:
        """Whether the first clip's cameras reorder frames (B-frames: decode order is not display
        order), from their first GOP."""
        clip = next(iter(self.dataset.clips))
        for camera in self.dataset.cameras:
            frames = self.store.index(f"{clip}/{camera}").gops[0].packet_frames
            if list(frames) != sorted(frames):
                return True
        return False

    def longest_gop(self) -> int:
        """Frames of the longest GOP of the first clip's cameras."""
        clip = next(iter(self.dataset.clips))
        return max(g.count for camera in self.dataset.cameras
                   for g in self.store.index(f"{clip}/{camera}").gops)

    def _camera_frame_bytes(self) -> list[int]:
        """NV12 bytes of a frame of each camera of the first clip."""
        clip = next(iter(self.dataset.clips))
        infos = [self.store.video_info(f"{clip}/{camera}") for camera in self.dataset.cameras]
        return [info.width * info.height * 3 // 2 for info in infos]

    def frame_bytes(self) -> int:
        """NV12 bytes of the largest frame of the first clip's cameras."""
        return max(self._camera_frame_bytes())

    def batch_frame_bytes(self) -> int:
        """NV12 bytes of one batch's frames, from the first clip's cameras."""
        first = self.samples(0)[:self.batch_size]
        return self.batch_size * len(first[0].frames) * sum(self._camera_frame_bytes())

    def slot_lead(self, slot: int) -> int:
        """How many steps ahead slot ``slot`` sends its GOPs (see StreamWindows.slot_lead)."""
        return self.windows.slot_lead(slot)

    def samples(self, epoch: int) -> list[SampleSpec]:
        """This shard's samples of ``epoch``, padded to whole batches (kept from the epoch before
        the current one on: stream windows look into the neighbouring epochs)."""
        if epoch not in self._epochs:
            self._epochs[epoch] = self.pattern.epoch_samples(self.dataset.clips,
                                                             **self._shard(epoch))
        return self._epochs[epoch]

    @property
    def store(self) -> GopStore:
        if self._store is None:
            self._store = GopStore(self.dataset.gop_root, fix_gop_size=self.fix_gop_size,
                                   verify_checksums=self.verify_checksums)
        return self._store

    def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
        epoch, position = sample_info.epoch_idx, sample_info.idx_in_epoch
        if epoch != self._current_epoch:
            self._current_epoch = epoch
            if not self.persistent_index:
                # the reference loader's non-persistent mode: indices re-read each epoch
                self._store = None
            self._epochs = {e: s for e, s in self._epochs.items() if e >= epoch - 1}
            self.windows.trim(epoch)
        if position >= len(self.samples(epoch)):
            raise StopIteration
        return self.read(position, epoch)

    def read(self, position: int, epoch: int = 0) -> tuple[np.ndarray, ...]:
        """The outputs for sample ``position`` of ``epoch`` (what the callback returns)."""
        spec = self.samples(epoch)[position]
        carried = self.ahead.carried(epoch, position)
        own = [] if carried else self._requests(epoch, position)
        target = self.ahead.target(epoch, position)
        ahead = self._requests(*target) if target is not None else []
        data, plan = self.store.read(
            own + ahead, kept_key=sample_key(epoch, position) if carried else -1,
            ahead_key=sample_key(*target) if target is not None else -1, ahead_from=len(own))
        return (data, plan.to_array(), np.asarray(spec.frames, dtype=np.int64),
                np.asarray([self._clip_index[spec.clip]], dtype=np.int64),
                np.arange(len(self.dataset.cameras), dtype=np.int64))

    def _requests(self, epoch: int, position: int) -> list[ReadRequest]:
        """Per camera: a stream step where the windows make the sample one, else plain."""
        spec = self.samples(epoch)[position]
        requests = []
        for camera in self.dataset.cameras:
            video = f"{spec.clip}/{camera}"
            step = self.windows.step(epoch, position, camera) if self.stream_decoding else None
            requests.append(ReadRequest(video, spec.frames) if step is None else
                            ReadRequest(video, spec.frames, spec.slot, step.sends, step.restart,
                                        step.release, step.generation, step.firsts))
        return requests

    def _gop_start(self, video: str, frame: int) -> int:
        return self.store.gop_start(video, frame)

    def _streams(self, epoch: int, position: int) -> bool:
        return self.stream_decoding and self.windows.streams(epoch, position, self.dataset.cameras)
