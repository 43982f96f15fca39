"""The decode plan (dali_gop/plan.py): fuzzed plans survive their array round trip."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dali_gop.plan import Plan, Request, Segment, StreamSend, StreamStep

from conftest import fuzz


int64 = st.integers(-2**63, 2**63 - 1)
segments = st.builds(Segment, offset=int64, size=int64,
                     packet_sizes=st.none() | st.lists(int64, max_size=5).map(tuple),
                     first_frame=int64, num_outputs=int64, codec=st.sampled_from(["h264", "hevc"]))
sends = st.builds(StreamSend, segment=int64, video_key=st.integers(0, 2**32 - 1), gop_start=int64)
streams = st.none() | st.builds(StreamStep, slot=int64, video_key=st.integers(0, 2**32 - 1),
                                gop_start=int64, restart=st.booleans(), release=st.booleans(),
                                sends=st.lists(sends, max_size=3).map(tuple))
requests = st.builds(Request, codec=st.sampled_from(["h264", "hevc"]), width=int64, height=int64,
                     picks=st.lists(st.tuples(int64, int64), max_size=5).map(tuple), stream=streams)


@fuzz(500)
@given(segs=st.lists(segments, max_size=4).map(tuple),
       reqs=st.lists(requests, max_size=4).map(tuple), names_offset=int64)
def test_fuzz_decode_plan_round_trip(segs, reqs, names_offset):
    plan = Plan.from_array(Plan(names_offset, segs, reqs).to_array())
    assert (plan.names_offset, plan.segments, plan.requests) == (names_offset, segs, reqs)
