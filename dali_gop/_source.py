"""The ``external_source`` callback: one sample (a clip at one time point, every camera) per call.

Runs in DALI's worker processes (``parallel=True``, ``batch=False``): file I/O only. It opens the GOP
store lazily in each worker, asks the access pattern which sample comes at this position of the
epoch, and returns the bytes the decoders need and the plan that tells them what to do.
"""
from __future__ import annotations


import numpy as np

from dali_gop._dataset import Dataset
from dali_gop.patterns import AccessPattern, SampleSpec
from dali_gop._store import GopStore, ReadRequest

#: what the callback returns, in this order (DALI's external_source with num_outputs=len(...))
SOURCE_OUTPUTS = ("data", "plan", "frame_idx", "clip", "camera")


class GopSource:
    """Picklable callable for ``fn.external_source(parallel=True, batch=False)``.

    Returns ``(data, plan, frame_idx, clip, camera)``: the GOP bytes of every camera back to back,
    the int64 decode plan, the sample's frame indices (T,), the clip's index in
    ``dataset.clips`` (1,), and the camera indices (C,).

    With ``stream_decoding`` and a pattern that assigns stream slots, each GOP a slot walks through
    is sent once per camera, ``stream_lead`` steps of the slot before the slot reaches it, so the
    decoder has it decoded by then; later samples in that GOP carry no bytes. A slot's steps are
    the samples ``batch_size`` positions apart (DALI decodes batches in order), and what a step
    sends, keeps and drops follows from the sample list alone (:meth:`_stream_request`), so every
    worker computes the same thing without talking to the others.
    """

    def __init__(self, dataset: Dataset, pattern: AccessPattern, *, batch_size: int, seed: int = 0,
                 shard_id: int = 0, num_shards: int = 1, fix_gop_size: int | None = None,
                 verify_checksums: bool = False, stream_decoding: bool = True,
                 persistent_index: bool = True, stream_lead: int = 30, decode_ahead: int = 0):
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
        if stream_lead < 0:
            raise ValueError(f"stream_lead must be >= 0, not {stream_lead}")
        self.stream_lead = stream_lead
        if decode_ahead < 0:
            raise ValueError(f"decode_ahead must be >= 0, not {decode_ahead}")
        self.decode_ahead = decode_ahead
        # memos of the stream windows, keyed (epoch, position, slot, camera); trimmed per epoch
        self._slot_gops: dict[tuple[int, int, int, str], tuple[str, int] | None] = {}
        self._windows: dict[tuple[int, int, int, str], list[tuple[str, int]]] = {}
        self._clip_index = {clip: i for i, clip in enumerate(dataset.clips)}
        self._store: GopStore | None = None
        self._epochs: dict[int, list[SampleSpec]] = {}
        self._current_epoch: int | None = None

    def __getstate__(self):
        # workers rebuild the store and the epoch's sample list themselves
        return {**self.__dict__, "_store": None, "_epochs": {}, "_current_epoch": None,
                "_slot_gops": {}, "_windows": {}}

    def shard_size(self, epoch: int = 0) -> int:
        """Real (non-padding) samples this shard sees in ``epoch``."""
        return self.pattern.shard_size(self.dataset.clips, epoch=epoch, seed=self.seed,
                                       shard_id=self.shard_id, num_shards=self.num_shards,
                                       batch_size=self.batch_size)

    def kept_gop_bytes(self) -> int:
        """At most how many bytes of decoded GOPs stream slots keep on the GPU (RGB), from the first
        clip's cameras: a slot keeps the GOPs of its next ``stream_lead`` steps, ceil(lead / GOP)
        + 2 per camera where a slot jumps from one chunk to the next and both ends are GOP parts
        (one less elsewhere). 0 when no sample streams."""
        if not self.stream_decoding or all(s.slot < 0 for s in self.samples(0)[:self.batch_size]):
            return 0
        clip = next(iter(self.dataset.clips))
        per_slot = 0
        for camera in self.dataset.cameras:
            index = self.store.index(f"{clip}/{camera}")
            counts = [g.count for g in index.gops]
            shortest = min(counts[:-1] or counts)    # a short last GOP is walked only once
            gops = -(-self.stream_lead // shortest) + 2
            per_slot += gops * max(counts) * index.width * index.height * 3
        return self.batch_size * per_slot

    def slot_lead(self, slot: int) -> int:
        """How many steps ahead slot ``slot`` sends its GOPs: ``stream_lead`` for slot 0, down to
        about half of it for the last slot. Slots whose GOP boundaries fall on the same steps
        (clips of equal length, fixed GOPs: the usual case) would otherwise all send in one batch,
        and NVDEC would get its work in bursts of batch size x cameras GOPs, idle between them."""
        return self.stream_lead - slot * self.stream_lead // (2 * self.batch_size)

    def samples(self, epoch: int) -> list[SampleSpec]:
        """This shard's samples of ``epoch``, padded to whole batches (kept from the epoch before
        the current one on: stream windows look into the neighbouring epochs)."""
        if epoch not in self._epochs:
            self._epochs[epoch] = self.pattern.epoch_samples(
                self.dataset.clips, epoch=epoch, seed=self.seed, shard_id=self.shard_id,
                num_shards=self.num_shards, batch_size=self.batch_size)
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
                self._store = None   # the seed's non-persistent mode: indices re-read each epoch
            self._epochs = {e: s for e, s in self._epochs.items() if e >= epoch - 1}
            self._slot_gops = {k: v for k, v in self._slot_gops.items() if k[0] >= epoch - 1}
            self._windows = {k: v for k, v in self._windows.items() if k[0] >= epoch - 1}
        if position >= len(self.samples(epoch)):
            raise StopIteration
        return self.read(position, epoch)

    def read(self, position: int, epoch: int = 0) -> tuple[np.ndarray, ...]:
        """The outputs for sample ``position`` of ``epoch`` (what the callback returns).

        Decoding ahead, the bytes are the sample's ``decode_ahead`` batches on (counted across
        epochs, like stream windows), and the sample's own frames are decoded already; the first
        samples of the run carry their own bytes too, since no sample came before them.
        """
        spec = self.samples(epoch)[position]
        cameras = self.dataset.cameras
        own = [] if self._decoded_ahead(epoch, position) else \
            [self._request(epoch, position, camera) for camera in cameras]
        ahead, ahead_key = [], -1
        target = position + self.decode_ahead * self.batch_size
        if self.decode_ahead and self._decoded_ahead(epoch, target):
            target_epoch, target = self._locate(epoch, target)
            ahead = [self._request(target_epoch, target, camera) for camera in cameras]
            ahead_key = self._key(target_epoch, target)
        data, plan = self.store.read(own + ahead, kept_key=-1 if own else self._key(epoch, position),
                                     ahead_key=ahead_key, ahead_from=len(own))
        return (data, plan.to_array(), np.asarray(spec.frames, dtype=np.int64),
                np.asarray([self._clip_index[spec.clip]], dtype=np.int64),
                np.arange(len(self.dataset.cameras), dtype=np.int64))

    @staticmethod
    def _key(epoch: int, position: int) -> int:
        return epoch << 32 | position

    def _decoded_ahead(self, epoch: int, position: int) -> bool:
        """Whether the sample at ``position`` (counted on across epochs) is decoded ahead: decoding
        ahead is on, some sample ``decode_ahead`` batches before it carries it, and it is plain
        (stream steps have their own lead)."""
        located = self._locate(epoch, position)
        if not self.decode_ahead or located is None:
            return False
        epoch, position = located
        if epoch == 0 and position < self.decode_ahead * self.batch_size:
            return False
        slot = self.samples(epoch)[position].slot
        return not self.stream_decoding or all(self._slot_gop(epoch, position, slot, camera) is None
                                               for camera in self.dataset.cameras)

    def _request(self, epoch: int, position: int, camera: str) -> ReadRequest:
        """A stream step when the sample belongs to a slot and sits in one GOP, else plain."""
        spec = self.samples(epoch)[position]
        video = f"{spec.clip}/{camera}"
        gop = self._slot_gop(epoch, position, spec.slot, camera) if self.stream_decoding else None
        if gop is None:
            return ReadRequest(video, spec.frames)
        return self._stream_request(epoch, position, camera, video, gop)

    def _stream_request(self, epoch, position, camera, video, gop) -> ReadRequest:
        """With W(p) the GOPs of the slot's steps p, p+B, ..., p+lead*B (B = batch size, lead the
        slot's :meth:`slot_lead`), step p
        sends W(p) - W(p-B) and releases its GOP if it is not in W(p+B). By induction the slot then
        holds exactly W(p) while step p picks, and nothing is sent twice while still held.

        Positions run on across epochs (DALI hands the next epoch's samples to the same decoders,
        and every epoch is whole batches, so a slot keeps its lane): the last steps of an epoch
        already send the GOPs the next epoch starts with, and NVDEC does not idle at the boundary.
        """
        spec = self.samples(epoch)[position]
        slot, step = spec.slot, self.batch_size
        previous = self._window(epoch, position - step, slot, camera)
        sends = tuple(g for g in self._window(epoch, position, slot, camera) if g not in previous)
        release = gop not in self._window(epoch, position + step, slot, camera)
        return ReadRequest(video, spec.frames, slot, sends, stream_restart=not previous,
                           stream_release=release)

    def _locate(self, epoch: int, position: int) -> tuple[int, int] | None:
        """(epoch, position) of a position counted on from ``epoch``'s start across epoch
        boundaries; None before epoch 0."""
        while position < 0:
            epoch -= 1
            if epoch < 0:
                return None
            position += len(self.samples(epoch))
        while position >= len(self.samples(epoch)):
            position -= len(self.samples(epoch))
            epoch += 1
        return epoch, position

    def _window(self, epoch: int, position: int, slot: int, camera: str) -> list[tuple[str, int]]:
        """W(position), in order; empty where ``position`` is no step of the slot (another slot's,
        a filler, or before the first epoch). Memoized: consecutive steps ask for each other's."""
        key = (epoch, position, slot, camera)
        gops = self._windows.get(key)
        if gops is not None:
            return gops
        gops = []
        located = self._locate(epoch, position)
        if located is not None and self.samples(located[0])[located[1]].slot == slot:
            for k in range(self.slot_lead(slot) + 1):
                gop = self._slot_gop(epoch, position + k * self.batch_size, slot, camera)
                if gop is not None and gop not in gops:
                    gops.append(gop)
        self._windows[key] = gops
        return gops

    def _slot_gop(self, epoch: int, position: int, slot: int,
                  camera: str) -> tuple[str, int] | None:
        """(video, GOP start) of slot ``slot``'s step at ``position`` (counted on across epochs);
        None where that is no step of the slot (another slot, padding, before the first epoch) or
        its frames span GOPs."""
        key = (epoch, position, slot, camera)
        if key in self._slot_gops:
            return self._slot_gops[key]
        located = self._locate(epoch, position) if slot >= 0 else None
        gop = None
        if located is not None:
            spec = self.samples(located[0])[located[1]]
            if spec.slot == slot and not spec.pad:
                video = f"{spec.clip}/{camera}"
                starts = {self.store.gop_start(video, f) for f in spec.frames}
                gop = (video, starts.pop()) if len(starts) == 1 else None
        self._slot_gops[key] = gop
        return gop
