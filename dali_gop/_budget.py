"""The loader's memory budget: what a configuration will hold, and the fastest one that fits.

What the loader holds grows with its options: the GOPs stream slots keep (``stream_lead``), the
samples decoded ahead (``decode_ahead``), the batches in flight, and on nvdec one NVDEC session per
decode thread (``decode_threads``): PyNvVideoCodec's, whose surfaces it sizes by the frame and
whose output buffers hold the frames of one ``Decode`` call (a whole GOP), or our own, which hold
the surfaces the video needs and no frames; where stream slots cannot keep GOPs, a session of
ours per slot and camera (``stream_sessions``), and DALI's queue (``prefetch_queue_depth``);
stream slots' GOPs may be kept in pinned host memory instead (``kept_gops``), which the device's
budget then does not count.
``make_loader(..., memory_budget=...)`` changes those options, the one that costs the least speed
first, until the estimate fits, and refuses a budget that nothing fits, naming the least that
would. The estimate counts frames the loader allocates, as ``GopLoader.memory()`` reports them,
DALI's queue of finished batches and the sessions. The allocator's cache is outside it, except
where GOPs are kept on the host: there the peak was measured above the rest, and that is counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from dali_gop.errors import ConfigError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20,
          "G": 2**30, "T": 2**40}


def parse_budget(value: int | str) -> int:
    """Bytes from an int or a string such as ``"4GiB"``, ``"512 MiB"``, ``"2.5GB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"memory_budget {value!r}: give bytes (an int) or a size such as '4GiB'")
    if isinstance(value, int):
        nbytes = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        unit = match and _UNITS.get(match.group(2).upper())
        if not unit:
            raise ConfigError(f"memory_budget {value!r}: give bytes (an int) or a size such as "
                              "'4GiB' (units B, KB, MB, GB, KiB, MiB, GiB)")
        nbytes = int(float(match.group(1)) * unit)
    if nbytes <= 0:
        raise ConfigError(f"memory_budget {value!r}: must be more than 0 bytes")
    return nbytes


#: the default budget: this share of the GPU's memory (nvdec, dali) or of the host's (cpu)
DEFAULT_SHARE = 0.25

#: decode threads a budget lowers nvdec to before anything else: NVDEC's engines are as busy at
#: this many (the benchmark's ceiling rows), and each thread fewer frees a session
FEW_THREADS = 16
#: the most decode threads of our own NVDEC sessions a budget picks: they decoded whole GOPs at
#: NVDEC's ceiling with 16-24 threads and far below it with 48 (docs/results.md)
OWN_THREADS = 24
#: decode threads a budget takes away at a time, down to :data:`FEW_THREADS`
THREAD_STEP = 8
#: the fewest decode threads a budget lowers nvdec to, before it turns stream decoding off
FEWEST_THREADS = 8
#: whether a budget that cannot keep GOPs gives each stream slot's camera a session of its own
#: (``stream_sessions``) before it lowers the rest: off, as on an H200 that path held more than
#: the budget it was chosen for and ran at a fraction of NVDEC's ceiling (docs/results.md); a
#: budget then turns stream decoding off instead, which keeps it
PAIR_SESSIONS_STEP = False
#: whether a budget keeps stream slots' GOPs in pinned host memory (where the backend can) before
#: it lowers ``stream_lead``: the lead is what keeps NVDEC busy, the host's memory is plentiful,
#: and the picks' copies to the device take PCIe time, not the SMs'
HOST_KEPT_STEP = True
#: where a budget keeps the GOPs of slots that only stream on the host, the decode threads it plans
#: (at most) and how many times the wanted ``stream_lead``: with GOPs on the host, fewer threads at
#: twice the lead kept pace with 48 at the lead, on less device memory and CPU (fewer sessions),
#: and 24 kept NVDEC busier than 16 (docs/results.md); the lead's frames cost pinned host memory,
#: so it is doubled only where they fit the ``host_limit`` that :func:`fit` is given
HOST_THREADS = OWN_THREADS
HOST_LEAD_FACTOR = 2


@dataclass(frozen=True)
class Choice:
    """The options a budget decides; ``threads`` 0 where the backend holds no NVDEC sessions,
    ``sessions`` whose NVDEC sessions the threads hold ("pynvvideocodec" or "own",
    dali_gop.backends._nvdec), ``prefetch`` DALI's ``prefetch_queue_depth``, ``stream_sessions``
    whether each stream slot's camera has a session of ours in place of kept GOPs
    (dali_gop.backends._stream_sessions), ``kept_gops`` where stream slots keep decoded GOPs
    ("device" or "host"; "" where the backend does not choose)."""
    stream_lead: int
    decode_ahead: int
    stream_decoding: bool
    threads: int = 0
    sessions: str = ""
    prefetch: int = 2
    stream_sessions: bool = False
    kept_gops: str = ""


def _pair_sessions(source, choice: Choice) -> int:
    """The (stream slot, camera) pairs that hold an NVDEC session of their own with ``choice``
    (``stream_sessions``, dali_gop.backends._stream_sessions): where slots stream and bins have
    their packet sizes (not the fixed-GOP path, whose GOPs are decoded whole)."""
    if not choice.stream_sessions or not choice.stream_decoding or source.fix_gop_size:
        return 0
    return source.stream_pairs()


def estimate(source, choice: Choice, *, rgb_factor: int = 1, staging: bool = True,
             session_bytes: Callable[[int, str], int] | None = None, gop_frames: int = 0,
             ring_frames: int = 0) -> dict[str, int]:
    """Bytes by kind that ``source``'s loader holds with ``choice``: kept frames in NV12 (x
    ``rgb_factor`` 2 where the backend keeps RGB: cpu), NV12 staging of two batches in flight
    (nvdec, unless every sample picks from kept GOPs), RGB batches in DALI's queue, being
    converted and being handed over, per decode thread ``session_bytes(frames one Decode call
    outputs, sessions)``, a segment of at most
    ``gop_frames`` (the longest GOP) per call, and per stream pair with a session of its own
    ``session_bytes(0, "stream")`` and a ring of ``ring_frames`` frames (where videos reorder).
    Device bytes (host bytes for cpu): GOPs kept on the host (``kept_gops`` "host") are not
    counted, only the staging their picks are copied into, and the allocators' cache beside it."""
    batch = source.batch_frame_bytes()
    pairs = _pair_sessions(source, choice) if session_bytes is not None else 0
    kept = source.kept_gop_bytes(choice.stream_lead) if choice.stream_decoding and not pairs else 0
    streaming = kept or pairs
    on_host = kept and choice.kept_gops == "host"
    if not staging:
        staged = 0
    elif kept and source.streams_only():
        # frames picked from kept GOPs are converted where they lie, not staged; from GOPs kept
        # on the host, a batch's picks are copied into one device block first
        staged = batch if on_host else 0
    else:
        # two batches in flight, and the picks' block where some samples stream from the host
        staged = 2 * batch + (batch if on_host else 0)
    figures = {"kept_gops": 0 if on_host else kept * rgb_factor,
               # stream slots' samples are not decoded ahead
               "decoded_ahead": 0 if streaming else choice.decode_ahead * batch,
               "staging": staged,
               "batches": (choice.prefetch + 2) * batch * 2,
               "decoder_sessions": 0,
               # with GOPs on the host the peak rose above the kinds counted here by up to an RGB
               # batch and a picks block, at every thread count and queue depth measured
               # (docs/results.md): what the allocators hold beside them, counted so that a
               # budget is not passed
               "allocator_cache": 3 * batch if on_host else 0}
    # decode threads open a session at their first plain segment: none where every sample streams
    if choice.threads and session_bytes is not None and not (pairs and source.streams_only()):
        figures["decoder_sessions"] = choice.threads * session_bytes(
            gop_frames, choice.sessions)
    if pairs:
        figures["stream_sessions"] = pairs * (session_bytes(0, "stream") +
                                              ring_frames * source.frame_bytes())
    return {kind: nbytes for kind, nbytes in figures.items() if nbytes}


def fit(budget: int, source, wanted: Choice, strict: bool = True, pair_sessions: bool | None = None,
        host_limit: int | None = None, **estimate_options) -> tuple[Choice, dict[str, int]]:
    """The choice closest to ``wanted`` whose estimate fits ``budget``: our own NVDEC sessions
    for PyNvVideoCodec's (a fraction of the memory; at most :data:`OWN_THREADS` of them) first,
    then decode threads lowered :data:`THREAD_STEP` at a time to :data:`FEW_THREADS`, then
    (:data:`HOST_KEPT_STEP`, where ``wanted.kept_gops`` is "device") stream slots' GOPs kept in
    pinned host memory, then ``stream_lead`` (down to 0), then (``pair_sessions``, default
    :data:`PAIR_SESSIONS_STEP`) a session of its own for each stream slot's camera in place of
    kept GOPs, then
    ``decode_ahead``, then DALI's prefetch queue to 1, then threads to :data:`FEWEST_THREADS`,
    then stream decoding off (each sample decoded from its keyframe: slow, but nothing kept);
    decode threads and the lead are then raised back where they still fit. Where the choice keeps
    GOPs on the host and every sample streams, it then takes :data:`HOST_THREADS` threads at most
    and :data:`HOST_LEAD_FACTOR` times the wanted lead, where those kept frames fit
    ``host_limit`` (bytes of pinned host memory; None: no limit). ConfigError when even
    that does not fit, with the least budget that would."""
    def total(choice: Choice) -> int:
        return sum(estimate(source, choice, **estimate_options).values())

    candidates = [wanted]
    if wanted.sessions == "pynvvideocodec":
        candidates.append(replace(wanted, sessions="own", threads=min(wanted.threads, OWN_THREADS)))
    # the most threads that fit: random access gains from every session NVDEC gets
    start = candidates[-1]
    candidates += [replace(start, threads=threads)
                   for threads in range(start.threads - THREAD_STEP, FEW_THREADS, -THREAD_STEP)]
    if start.threads > FEW_THREADS:
        candidates.append(replace(start, threads=FEW_THREADS))
    threads_lowered = len(candidates)
    candidates += [replace(candidates[-1], stream_lead=lead)
                   for lead in range(wanted.stream_lead - 1, -1, -1)]
    if pair_sessions is None:
        pair_sessions = PAIR_SESSIONS_STEP
    if pair_sessions and wanted.threads and not wanted.stream_sessions and \
            _pair_sessions(source, replace(wanted, stream_sessions=True)):
        # kept GOPs at lead 0 are still a GOP per slot and camera: a session each instead
        candidates.append(replace(candidates[-1], sessions="own", stream_sessions=True))
    lowest = candidates[-1]
    candidates += [replace(lowest, decode_ahead=ahead)
                   for ahead in range(wanted.decode_ahead - 1, -1, -1)]
    if candidates[-1].prefetch > 1:
        candidates.append(replace(candidates[-1], prefetch=1))
    if candidates[-1].threads > FEWEST_THREADS:
        candidates.append(replace(candidates[-1], threads=FEWEST_THREADS))
    lowest = candidates[-1]
    if lowest.stream_decoding:
        candidates.append(replace(lowest, stream_decoding=False))
    if HOST_KEPT_STEP and wanted.kept_gops == "device":
        # after the sessions and threads (they free memory at no cost in speed), before the
        # lead; every later step keeps them on the host too
        candidates[threads_lowered:] = [replace(c, kept_gops="host")
                                        for c in candidates[threads_lowered - 1:]]
    for choice in candidates:
        if total(choice) <= budget:
            # what was lowered on the way and freed nothing (a lead where slots keep no GOPs)
            # goes back, where it still fits
            back = [("threads", wanted.threads), ("threads", start.threads)]
            if choice.stream_decoding:
                back.append(("stream_lead", wanted.stream_lead))
            for option, value in back:
                more = replace(choice, **{option: value})
                if getattr(choice, option) < value and total(more) <= budget:
                    choice = more
            choice = _on_the_host(choice, source, host_limit)
            return choice, estimate(source, choice, **estimate_options)
    least = total(candidates[-1])
    if not strict:
        return candidates[-1], estimate(source, candidates[-1], **estimate_options)
    threads = f", decode_threads={lowest.threads}" if lowest.threads else ""
    raise ConfigError(f"memory_budget {_size(budget)} is less than this loader needs at the least "
                      f"({_size(least)}: batch_size {source.batch_size} x "
                      f"{len(source.dataset.cameras)} cameras, decode_ahead=0, "
                      f"stream_decoding=False{threads}): raise it to at least that, or lower batch_size "
                      "or the cameras served")


def _on_the_host(choice: Choice, source, host_limit: int | None) -> Choice:
    """``choice`` with :data:`HOST_THREADS` and a longer lead where it keeps the GOPs of slots
    that only stream in pinned host memory. Neither passes the device's budget: fewer threads
    hold fewer sessions, and the lead's frames are kept on the host."""
    if choice.kept_gops != "host" or not choice.stream_decoding or not source.streams_only():
        return choice
    if choice.threads > HOST_THREADS:
        choice = replace(choice, threads=HOST_THREADS)
    longer = choice.stream_lead * HOST_LEAD_FACTOR
    if longer > choice.stream_lead and (host_limit is None or
                                        source.kept_gop_bytes(longer) <= host_limit):
        choice = replace(choice, stream_lead=longer)
    return choice


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"
