"""The ``dali`` backend: DALI's own video decoder (``fn.decoders.video``) on the GOP bytes, the
baseline the ``nvdec`` backend is compared with.

Graph, per sample::

    (data, plan) --CameraBuffers (CPU python_function)--> per camera: one Annex-B buffer (that
        camera's segments back to back) and the picked frames' positions in its output
    per camera: buffer --fn.decoders.video(mixed)--> every frame of the buffer, (F, H, W, 3) RGB
        --fn.sequence_rearrange(positions)--> the picked frames (T, H, W, 3)
    fn.stack over cameras --> (cameras, T, H, W, 3) on the GPU

DALI's decoder demuxes each buffer with FFmpeg's raw H.264/HEVC demuxer and decodes it whole from
its first keyframe, with a new parser and frame index per sample and nothing kept between
samples: stream steps (a GOP sent once per stream slot) cannot apply, so loaders using this
backend must be built with ``stream_decoding=False``. Its RGB conversion interpolates chroma
bilinearly (dali/operators/video/color_space.cu) where FFmpeg's rgb24 and NVDEC take the nearest
chroma sample, so at colour edges its pixels differ from theirs. It always converts with BT.601
(limited range, or full range when the bitstream's video_full_range_flag says so;
FramesDecoderGpu::InitGpuDecoder in dali/operators/video/frames_decoder_gpu.cc), whatever the
video's matrix: videos whose conversion under the colour contract is not BT.601 are refused
(``color_matrix="bt601"`` lets them through, converted as BT.601 by every backend).

Known limit of concatenating a camera's segments (sequence samples spanning GOPs): FFmpeg drops
the second segment when a cut open H.264 GOP (non-IDR keyframe) is followed by a non-adjacent one
(tests/test_dali_backend.py); HEVC and closed GOPs decode exactly.
"""
from __future__ import annotations

import numpy as np

from dali_gop.backends._base import DecodeBackend
from dali_gop.hooks import annotate
from dali_gop.backends._assemble import DecodeError, frames_shape, refuse_decoding_ahead
from dali_gop.errors import ConfigError
from dali_gop.plan import Plan, Request, segment_names


def camera_buffer(data: np.ndarray, plan: Plan, request: Request) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """One camera's segments as one Annex-B stream, and where its picks land in the decoded output.

    Segments go in segment order (GOP order), back to back: each starts with its parameter sets and
    a keyframe whose leading pictures the cutting rule left out, so it decodes as it would alone,
    and a segment's outputs come after those of the segments before it. No end-of-sequence NAL
    unit goes between them: after one, HEVC makes a CRA discard the pictures not yet output
    (NoOutputOfPriorPicsFlag = 1, H.265 C.5.2.2), which loses B-frames of the segment before.
    """
    parts, first_output, produced = [], {}, 0
    for segment in sorted({segment for segment, _ in request.picks}):
        s = plan.segments[segment]
        parts.append(data[s.offset:s.offset + s.size])
        first_output[segment] = produced
        produced += s.num_outputs
    positions = np.array([first_output[segment] + position for segment, position in request.picks],
                         dtype=np.int32)    # fn.sequence_rearrange takes int32 orders
    return np.concatenate(parts), positions


class CameraBuffers:
    """CPU python_function: (data, plan) -> buffer_0, positions_0, buffer_1, positions_1, ..."""

    def __init__(self, num_cameras: int):
        self.num_cameras = num_cameras

    def __call__(self, data: np.ndarray, plan: np.ndarray) -> tuple[np.ndarray, ...]:
        with annotate("buffers (dali)", color="red"):
            return self._split(data, Plan.from_array(plan))

    def _split(self, data: np.ndarray, plan: Plan) -> tuple[np.ndarray, ...]:
        names = segment_names(data, plan.names_offset)
        refuse_decoding_ahead(plan, names, "dali")
        if any(r.stream is not None for r in plan.requests):
            raise DecodeError("the dali backend decodes every sample from its keyframe: build the "
                              "loader with stream_decoding=False")
        if len(plan.requests) != self.num_cameras:
            raise DecodeError(f"a sample of {names[0]} ... has {len(plan.requests)} cameras, the "
                              f"pipeline was built for {self.num_cameras}")
        frames_shape(plan.requests, names)   # cameras of one sample must share a size to be stacked
        out = []
        for request in plan.requests:
            out += camera_buffer(data, plan, request)
        return tuple(out)


class DaliBackend(DecodeBackend):
    name = "dali"
    device = "gpu"
    stateful = False

    def __init__(self, color: str = "RGB", num_cameras: int | None = None,
                 color_matrix: str | None = None):
        super().__init__(color, color_matrix)
        self.num_cameras = num_cameras

    def bind(self, num_cameras: int) -> None:
        self.num_cameras = num_cameras

    def check_videos(self, store, videos) -> dict[str, tuple[str, str]]:
        """DALI's decoder gave wrong frames on B-frame streams (HEVC, H100 run of
        tests/test_gpu_dali.py): it numbers frames by timestamps that a raw Annex-B stream does not
        carry. Refused here, from the indices, rather than delivered wrong; so are videos whose
        colours DALI's BT.601-only conversion would get wrong."""
        conversions = super().check_videos(store, videos)
        for video in videos:
            if store.index(video).has_b_frames:
                raise ValueError(f"{store.gop_root / video}: has B-frames (decode order differs "
                                 "from display order); the dali backend decodes such streams to "
                                 "wrong frames: use the nvdec backend")
            matrix, _ = conversions[video]
            if matrix != "bt601":
                raise ConfigError(f"{store.gop_root / video}: converts with {matrix} (the colour "
                                  "contract); DALI's video decoder converts with BT.601 only: use "
                                  "the nvdec or cpu backend, or color_matrix='bt601'")
        return conversions

    def decode(self, data, plan):
        from nvidia.dali import fn, types
        if not self.num_cameras:
            raise ValueError("the dali backend builds one decoder per camera: give it num_cameras "
                             "(or call bind(num_cameras)) before decode")
        outputs = fn.python_function(data, plan, function=CameraBuffers(self.num_cameras),
                                     num_outputs=2 * self.num_cameras, batch_processing=False)
        cameras = []
        for camera in range(self.num_cameras):
            frames = self._decode_camera(outputs[2 * camera])
            frames = fn.sequence_rearrange(frames, new_order=outputs[2 * camera + 1])
            if self.color == "BGR":
                frames = fn.color_space_conversion(frames, image_type=types.RGB,
                                                   output_type=types.BGR)
            cameras.append(frames)
        return fn.stack(*cameras)

    def _decode_camera(self, buffer):
        """Every frame of a camera's buffer: (F, H, W, 3) RGB, layout FHWC, on the GPU."""
        from nvidia.dali import fn
        return fn.decoders.video(buffer, device="mixed")
