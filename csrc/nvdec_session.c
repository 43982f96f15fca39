/* One NVDEC session (the driver's bitstream parser and a hardware decoder) that writes decoded
 * frames straight into the caller's device memory, for dali_gop's nvdec backend
 * (dali_gop/backends/_nvdec_session.py loads it with ctypes, which drops the GIL for each call).
 *
 * Why not PyNvVideoCodec: it sizes the decoder's surfaces itself, beyond what the video needs,
 * and keeps every frame of a call in output buffers of its own until the next call; a session
 * there held tens of frames of device memory, and the loader's memory budget could not go below
 * that (docs/results.md). Here the decoder gets the surfaces the parser says the video needs (plus
 * a few the caller chooses), one output surface, and each frame goes to the caller's memory the
 * moment the parser displays it: nothing else is kept.
 *
 * Plain C against the driver's own libraries (libnvcuvid, libcuda), opened at run time: no CUDA
 * toolkit or Python headers to build it, and one build serves every Python version. The NVDEC
 * headers in csrc/nvcuvid are NVIDIA's (MIT); of cuda.h, csrc/driver_types.h has what is needed.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "driver_types.h"

static struct {
    char error[256];
    CUresult (*create_parser)(CUvideoparser *, CUVIDPARSERPARAMS *);
    CUresult (*parse)(CUvideoparser, CUVIDSOURCEDATAPACKET *);
    CUresult (*destroy_parser)(CUvideoparser);
    CUresult (*create_decoder)(CUvideodecoder *, CUVIDDECODECREATEINFO *);
    CUresult (*destroy_decoder)(CUvideodecoder);
    CUresult (*decode_picture)(CUvideodecoder, CUVIDPICPARAMS *);
    CUresult (*decode_status)(CUvideodecoder, int, CUVIDGETDECODESTATUS *);
    CUresult (*map)(CUvideodecoder, int, unsigned long long *, unsigned int *, CUVIDPROCPARAMS *);
    CUresult (*unmap)(CUvideodecoder, unsigned long long);
    CUresult (*copy_2d)(const Copy2D *, CUstream);
    CUresult (*synchronize)(CUstream);
    CUresult (*current_context)(CUcontext *);
    CUresult (*push_context)(CUcontext);
    CUresult (*pop_context)(CUcontext *);
} api;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void *symbol(void *library, const char *library_name, const char *name) {
    void *found = library ? dlsym(library, name) : NULL;
    if (!found && !api.error[0])
        snprintf(api.error, sizeof api.error, "%s has no %s (driver too old?)", library_name, name);
    return found;
}

static void load_api(void) {
    void *cuvid = dlopen("libnvcuvid.so.1", RTLD_NOW | RTLD_LOCAL);
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuvid || !cuda) {
        snprintf(api.error, sizeof api.error, "cannot open %s: NVIDIA's driver (with its video "
                 "decoder library) is not installed here", cuvid ? "libcuda.so.1" : "libnvcuvid.so.1");
        return;
    }
#define BIND(field, library, name) *(void **)&api.field = symbol(library, #library, name)
    BIND(create_parser, cuvid, "cuvidCreateVideoParser");
    BIND(parse, cuvid, "cuvidParseVideoData");
    BIND(destroy_parser, cuvid, "cuvidDestroyVideoParser");
    BIND(create_decoder, cuvid, "cuvidCreateDecoder");
    BIND(destroy_decoder, cuvid, "cuvidDestroyDecoder");
    BIND(decode_picture, cuvid, "cuvidDecodePicture");
    BIND(map, cuvid, "cuvidMapVideoFrame64");
    BIND(unmap, cuvid, "cuvidUnmapVideoFrame64");
    BIND(copy_2d, cuda, "cuMemcpy2DAsync_v2");
    BIND(synchronize, cuda, "cuStreamSynchronize");
    BIND(current_context, cuda, "cuCtxGetCurrent");
    BIND(push_context, cuda, "cuCtxPushCurrent_v2");
    BIND(pop_context, cuda, "cuCtxPopCurrent_v2");
#undef BIND
    /* optional: older drivers and GPUs report no decode status */
    *(void **)&api.decode_status = dlsym(cuvid, "cuvidGetDecodeStatus");
}

/* frames one packet of a deferring call may display (a flush of a stream with B-frames) */
#define MAX_DEFERRED 32

typedef struct {
    CUcontext context;
    CUstream stream;
    unsigned extra_surfaces;
    /* nvdec_session_decode: a frame's surface goes back before the next frame is mapped (or at
       the call's end), not at once: the parser then queues the next picture on NVDEC while the
       frame's copies run, where a sync at once holds it back until they are done (the map's
       own read of the picture is still waited for at once: deliver's settle) */
    int unmap_late;
    CUvideoparser parser;
    CUvideodecoder decoder;
    CUVIDEOFORMAT format;       /* of the decoder made */
    unsigned surfaces;
    /* this call's frames: copy output position[i] to pointer[i] (sorted by position) */
    const long long *positions;
    const unsigned long long *pointers;
    int targets, cursor;
    int width, height;          /* the caller's frame size: any other is refused, never copied */
    long long outputs;          /* frames displayed since the last end of stream */
    /* nvdec_sessions_submit: frames displayed while parsing, mapped and copied at
       nvdec_sessions_collect, once every session of the call has its picture queued on NVDEC
       (so that they decode at once) */
    int defer, deferred;
    struct { CUVIDPARSERDISPINFO shown; int first, last; } pending[MAX_DEFERRED];
    /* the frame mapped, its copies queued on the stream: unmapped after the sync that waits for
       them (nvdec_sessions_decode syncs once for all its sessions: a sync per frame was GPU work
       beside a training step's kernels) */
    int mapped;
    unsigned long long mapped_frame;
    double submitting;         /* seconds of its nvdec_sessions_submit, until collected */
    int failed;
    char error[512];
    /* seconds spent inside this session's calls, in cuvidMapVideoFrame and in the stream sync
       after the copies, and the calls and frames: where a slow call waits (nvdec_session_times);
       then in cuvidDecodePicture, in cuvidCreateDecoder (and how many it made), and the longest
       call, map and picture: where a call that stalls once waits */
    double in_calls, in_map, in_sync;
    long long calls, delivered;
    double in_picture, in_create, longest_call, longest_map, longest_picture;
    long long creates;
} Session;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int fail(Session *s, const char *format, ...) {
    if (!s->failed) {
        va_list args;
        va_start(args, format);
        vsnprintf(s->error, sizeof s->error, format, args);
        va_end(args);
        s->failed = 1;
    }
    return 0;
}

/* Wait for the session's stream: the copies queued on it are done. */
static CUresult sync_stream(Session *s) {
    double started = now();
    CUresult status = api.synchronize(s->stream);
    s->in_sync += now() - started;
    return status;
}

/* The frame mapped goes back to the decoder, once its copies are done (``synced``: the status of
 * the sync that waited for them). */
static int unmap(Session *s, CUresult synced) {
    api.unmap(s->decoder, s->mapped_frame);
    s->mapped = 0;
    return synced ? fail(s, "cuStreamSynchronize failed with CUDA error %d", synced) : 1;
}

static int release(Session *s) {
    return s->mapped ? unmap(s, sync_stream(s)) : 1;
}

static int same_format(const CUVIDEOFORMAT *a, const CUVIDEOFORMAT *b) {
    return a->codec == b->codec && a->coded_width == b->coded_width &&
           a->coded_height == b->coded_height && a->chroma_format == b->chroma_format &&
           a->display_area.left == b->display_area.left && a->display_area.top == b->display_area.top &&
           a->display_area.right == b->display_area.right &&
           a->display_area.bottom == b->display_area.bottom;
}

static int CUDAAPI on_sequence(void *user, CUVIDEOFORMAT *format) {
    Session *s = user;
    unsigned surfaces = format->min_num_decode_surfaces + s->extra_surfaces;
    if (s->failed)
        return 0;
    if (format->chroma_format != cudaVideoChromaFormat_420 || format->bit_depth_luma_minus8 ||
        format->bit_depth_chroma_minus8)
        return fail(s, "the nvdec backend decodes 8-bit 4:2:0 video only (this is %d-bit, chroma "
                    "format %d); use backend='cpu' for it", format->bit_depth_luma_minus8 + 8,
                    (int)format->chroma_format);
    if (s->decoder && same_format(format, &s->format) && surfaces <= s->surfaces)
        return (int)s->surfaces;
    if (s->decoder) {
        api.destroy_decoder(s->decoder);
        s->decoder = NULL;
    }
    CUVIDDECODECREATEINFO info;
    memset(&info, 0, sizeof info);
    info.ulWidth = info.ulMaxWidth = format->coded_width;
    info.ulHeight = info.ulMaxHeight = format->coded_height;
    info.ulNumDecodeSurfaces = surfaces;
    info.CodecType = format->codec;
    info.ChromaFormat = format->chroma_format;
    info.ulCreationFlags = cudaVideoCreate_PreferCUVID;
    info.OutputFormat = cudaVideoSurfaceFormat_NV12;
    info.DeinterlaceMode = cudaVideoDeinterlaceMode_Weave;   /* frames as coded, as FFmpeg gives them */
    info.display_area.left = (short)format->display_area.left;
    info.display_area.top = (short)format->display_area.top;
    info.display_area.right = (short)format->display_area.right;
    info.display_area.bottom = (short)format->display_area.bottom;
    info.ulTargetWidth = format->display_area.right - format->display_area.left;
    info.ulTargetHeight = format->display_area.bottom - format->display_area.top;
    info.ulNumOutputSurfaces = 1;    /* one frame mapped at a time: copied, then unmapped */
    double started = now();
    CUresult status = api.create_decoder(&s->decoder, &info);
    s->in_create += now() - started;
    s->creates++;
    if (status) {
        s->decoder = NULL;
        return fail(s, "cuvidCreateDecoder failed with CUDA error %d for %s %ux%u", status,
                    format->codec == cudaVideoCodec_HEVC ? "hevc" : "h264",
                    info.ulTargetWidth, info.ulTargetHeight);
    }
    s->format = *format;
    s->surfaces = surfaces;
    return (int)surfaces;
}

static int CUDAAPI on_decode(void *user, CUVIDPICPARAMS *picture) {
    Session *s = user;
    if (s->failed || !s->decoder)
        return fail(s, "NVDEC got a picture before its sequence header");
    double started = now();
    CUresult status = api.decode_picture(s->decoder, picture);
    double spent = now() - started;
    s->in_picture += spent;
    if (spent > s->longest_picture)
        s->longest_picture = spent;
    return status ? fail(s, "cuvidDecodePicture failed with CUDA error %d", status) : 1;
}

static int copy_frame(Session *s, CUdeviceptr source, unsigned pitch, CUdeviceptr target) {
    /* NV12 into a dense (height * 3/2, width) frame in one copy: the mapped surface keeps its
       chroma rows right after its luma rows, at the pitch of both (its surface height is the
       display height, which a dense NV12 frame has even: s->height was checked against it) */
    Copy2D copy;
    memset(&copy, 0, sizeof copy);
    copy.srcMemoryType = MEMORYTYPE_DEVICE;
    /* unified: the target may be pinned host memory (stream slots' GOPs kept on the host) */
    copy.dstMemoryType = MEMORYTYPE_UNIFIED;
    copy.srcPitch = pitch;
    copy.dstPitch = copy.WidthInBytes = (size_t)s->width;
    copy.srcDevice = source;
    copy.dstDevice = target;
    copy.Height = (size_t)s->height * 3 / 2;
    CUresult status = api.copy_2d(&copy, s->stream);
    return status ? fail(s, "cuMemcpy2DAsync failed with CUDA error %d", status) : 1;
}

static int deliver(Session *s, CUVIDPARSERDISPINFO *shown, int first, int last, int unmap_now,
                   int settle);

static int CUDAAPI on_display(void *user, CUVIDPARSERDISPINFO *shown) {
    Session *s = user;
    if (!shown)
        return 1;
    if (s->failed)
        return 0;
    long long position = s->outputs++;
    if (api.decode_status) {
        CUVIDGETDECODESTATUS status;
        memset(&status, 0, sizeof status);
        if (api.decode_status(s->decoder, shown->picture_index, &status) == 0 &&
            (status.decodeStatus == cuvidDecodeStatus_Error ||
             status.decodeStatus == cuvidDecodeStatus_Error_Concealed))
            return fail(s, "NVDEC reported frame %lld of this segment corrupt (decode status %d)",
                        position, (int)status.decodeStatus);
    }
    while (s->cursor < s->targets && s->positions[s->cursor] < position)
        s->cursor++;
    if (s->cursor >= s->targets || s->positions[s->cursor] != position)
        return 1;
    int width = s->format.display_area.right - s->format.display_area.left;
    int height = s->format.display_area.bottom - s->format.display_area.top;
    if (width != s->width || height != s->height)
        return fail(s, "NVDEC frame %dx%d does not fit the sample's %dx%d (cameras or clips of "
                    "different sizes?)", width, height, s->width, s->height);
    int first = s->cursor;
    while (s->cursor < s->targets && s->positions[s->cursor] == position)
        s->cursor++;
    if (s->defer) {
        if (s->deferred == MAX_DEFERRED)
            return fail(s, "NVDEC displayed more than %d frames for one packet", MAX_DEFERRED);
        s->pending[s->deferred].shown = *shown;
        s->pending[s->deferred].first = first;
        s->pending[s->deferred].last = s->cursor;
        s->deferred++;
        return 1;
    }
    return deliver(s, shown, first, s->cursor, !s->unmap_late, s->unmap_late);
}

/* Map a displayed frame, copy it to pointers[first:last], unmap it: after a sync now, or else
 * (a call of several sessions) after one sync for them all at the call's end, or before the
 * session's next frame is mapped (release). ``settle``: the map's own work is waited for before
 * the copies are queued (unmap_late). */
static int deliver(Session *s, CUVIDPARSERDISPINFO *shown, int first, int last, int unmap_now,
                   int settle) {
    if (!release(s))
        return 0;
    CUVIDPROCPARAMS process;
    memset(&process, 0, sizeof process);
    process.progressive_frame = shown->progressive_frame;
    process.top_field_first = shown->top_field_first;
    process.second_field = shown->repeat_first_field + 1;
    process.unpaired_field = shown->repeat_first_field < 0;
    process.output_stream = s->stream;
    unsigned long long source = 0;
    unsigned pitch = 0;
    double started = now();
    CUresult status = api.map(s->decoder, shown->picture_index, &source, &pitch, &process);
    double mapped = now();
    s->in_map += mapped - started;
    if (mapped - started > s->longest_map)
        s->longest_map = mapped - started;
    s->delivered++;
    if (status)
        return fail(s, "cuvidMapVideoFrame failed with CUDA error %d", status);
    /* the surface goes back to the decoder when unmapped: not before the copies have read it */
    s->mapped = 1;
    s->mapped_frame = source;
    if (settle) {
        /* the map's post-processing reads the picture's decode surface on the stream, and once
           this callback returns the parser may decode a later picture into that surface: the
           read is waited for here, the copies out of the mapped frame are not */
        CUresult settled = sync_stream(s);
        if (settled)
            return unmap(s, settled);
    }
    int ok = 1;
    for (int i = first; ok && i < last; i++)
        ok = copy_frame(s, source, pitch, s->pointers[i]);
    return (!unmap_now || release(s)) && ok;
}

static void report(char *error, int size, const char *message) {
    if (error && size > 0)
        snprintf(error, (size_t)size, "%s", message);
}

/* A session on the current CUDA context, copying on ``stream``; NULL and ``error`` on failure.
 * ``unmap_late``: see Session. */
void *nvdec_session_create(int codec, unsigned long long stream, unsigned extra_surfaces,
                           unsigned display_delay, int unmap_late, char *error, int error_size) {
    pthread_once(&api_once, load_api);
    if (api.error[0]) {
        report(error, error_size, api.error);
        return NULL;
    }
    Session *s = calloc(1, sizeof *s);
    if (!s) {
        report(error, error_size, "out of host memory");
        return NULL;
    }
    if (api.current_context(&s->context) || !s->context) {
        report(error, error_size, "no current CUDA context in this thread");
        free(s);
        return NULL;
    }
    s->stream = (CUstream)(size_t)stream;
    s->extra_surfaces = extra_surfaces;
    s->unmap_late = unmap_late;
    CUVIDPARSERPARAMS params;
    memset(&params, 0, sizeof params);
    params.CodecType = (cudaVideoCodec)codec;
    params.ulMaxNumDecodeSurfaces = 1;   /* raised by on_sequence's return */
    params.ulErrorThreshold = 0;         /* a damaged picture is not decoded: frames go missing */
    params.ulMaxDisplayDelay = display_delay;
    params.pUserData = s;
    params.pfnSequenceCallback = on_sequence;
    params.pfnDecodePicture = on_decode;
    params.pfnDisplayPicture = on_display;
    CUresult status = api.create_parser(&s->parser, &params);
    if (status) {
        char message[96];
        snprintf(message, sizeof message, "cuvidCreateVideoParser failed with CUDA error %d", status);
        report(error, error_size, message);
        free(s);
        return NULL;
    }
    return s;
}

static void set_targets(Session *s, const long long *positions, const unsigned long long *pointers,
                        int targets, int width, int height) {
    s->positions = positions;
    s->pointers = pointers;
    s->targets = targets;
    s->cursor = 0;
    s->width = width;
    s->height = height;
}

static void parse(Session *s, const unsigned char *data, unsigned long long size, int end_of_stream) {
    CUcontext popped;
    CUVIDSOURCEDATAPACKET packet;
    memset(&packet, 0, sizeof packet);
    packet.payload = data;
    packet.payload_size = (unsigned long)size;
    packet.flags = end_of_stream ? CUVID_PKT_ENDOFSTREAM : 0;
    CUresult status = api.push_context(s->context);
    if (!status) {
        status = api.parse(s->parser, &packet);
        api.pop_context(&popped);
    }
    if (status && !s->failed)
        fail(s, "cuvidParseVideoData failed with CUDA error %d", status);
}

/* The call's frames are out: its outputs (or -1 where it failed), the count reset at an end of
 * stream. */
static long long finish(Session *s, int end_of_stream) {
    long long outputs = s->outputs;
    s->positions = NULL;
    s->pointers = NULL;
    s->targets = 0;
    if (end_of_stream)
        s->outputs = 0;
    return s->failed ? -1 : outputs;
}

/* Parse ``size`` bytes (Annex B), then flush if ``end_of_stream`` (the next bytes start a new
 * stream at a keyframe); output ``positions[i]`` (counted from the last flush) is copied to
 * ``pointers[i]`` as a dense NV12 frame of ``width`` x ``height``, every copy done on return.
 * Returns the frames output since the last flush, or -1 and ``error``. After an error the session
 * is in an unknown state: destroy it. */
long long nvdec_session_decode(void *session, const unsigned char *data, unsigned long long size,
                               int end_of_stream, const long long *positions,
                               const unsigned long long *pointers, int targets, int width,
                               int height, char *error, int error_size) {
    Session *s = session;
    double started = now();
    if (!s->failed) {
        set_targets(s, positions, pointers, targets, width, height);
        parse(s, data, size, end_of_stream);
    }
    release(s);    /* the last frame mapped (unmap_late): every copy done on return */
    long long outputs = finish(s, end_of_stream);
    double spent = now() - started;
    s->in_calls += spent;
    if (spent > s->longest_call)
        s->longest_call = spent;
    s->calls++;
    if (outputs < 0)
        report(error, error_size, s->error);
    return outputs;
}

/* The first half of nvdec_sessions_decode: every session's packet is parsed, its pictures queued
 * on NVDEC, and the frames they display are noted, none mapped yet. Until
 * nvdec_sessions_collect with the same sessions, the caller keeps ``positions`` and ``pointers``
 * alive and makes no other call on these sessions; meanwhile NVDEC decodes, and the caller's
 * thread is free (a thread that feeds two groups of sessions keeps one on NVDEC while it
 * collects the other). */
void nvdec_sessions_submit(int count, void **sessions, const unsigned char **datas,
                           const unsigned long long *sizes, const int *ends,
                           const long long **positions, const unsigned long long **pointers,
                           const int *targets, const int *widths, const int *heights) {
    double started = now();
    for (int i = 0; i < count; i++) {
        Session *s = sessions[i];
        s->deferred = 0;
        if (s->failed)
            continue;
        set_targets(s, positions[i], pointers[i], targets[i], widths[i], heights[i]);
        s->defer = 1;
        parse(s, datas[i], sizes[i], ends[i]);
        s->defer = 0;
    }
    double whole = now() - started;
    for (int i = 0; i < count; i++) {
        Session *s = sessions[i];
        s->submitting = whole;
        s->in_calls += whole / count;
    }
}

/* The second half: the frames the packets displayed are mapped (each waits for its picture) and
 * copied, their surfaces given back after one sync per stream (a thread's sessions share its
 * stream), and ``outputs[i]`` gets session i's result, -1 where it failed (nvdec_session_error
 * says why); the other sessions are not affected. */
void nvdec_sessions_collect(int count, void **sessions, const int *ends, long long *outputs) {
    double started = now();
    for (int i = 0; i < count; i++) {
        Session *s = sessions[i];
        for (int k = 0; k < s->deferred && !s->failed; k++)
            deliver(s, &s->pending[k].shown, s->pending[k].first, s->pending[k].last, 0, 0);
        s->deferred = 0;
    }
    for (int i = 0; i < count; i++) {
        Session *s = sessions[i];
        if (!s->mapped)
            continue;
        CUresult synced = sync_stream(s);
        for (int j = i; j < count; j++) {
            Session *t = sessions[j];
            if (t->mapped && t->stream == s->stream)
                unmap(t, synced);
        }
    }
    for (int i = 0; i < count; i++)
        outputs[i] = finish(sessions[i], ends[i]);
    double spent = now() - started;
    for (int i = 0; i < count; i++) {
        Session *s = sessions[i];
        double whole = s->submitting + spent;    /* the call it waited in, both halves */
        s->in_calls += spent / count;
        if (whole > s->longest_call)
            s->longest_call = whole;
        s->submitting = 0;
        s->calls++;
    }
}

/* nvdec_session_decode for ``count`` sessions at once (one packet each, from one thread): every
 * session's packet is parsed first, its pictures queued on NVDEC, and the frames they display
 * are copied out after that, so that the sessions' pictures decode at once rather than one after
 * the other (nvdec_sessions_submit, then nvdec_sessions_collect). */
void nvdec_sessions_decode(int count, void **sessions, const unsigned char **datas,
                           const unsigned long long *sizes, const int *ends,
                           const long long **positions, const unsigned long long **pointers,
                           const int *targets, const int *widths, const int *heights,
                           long long *outputs) {
    nvdec_sessions_submit(count, sessions, datas, sizes, ends, positions, pointers, targets,
                          widths, heights);
    nvdec_sessions_collect(count, sessions, ends, outputs);
}

/* Where the session's calls spent their time: out[0..4] = seconds in its calls (a call of
 * several sessions shared out evenly), in cuvidMapVideoFrame (waiting for the picture), in the
 * sync after its copies (waiting for the copy stream), the calls, the frames delivered;
 * out[5..10] = seconds in cuvidDecodePicture, in cuvidCreateDecoder, the decoders it made, and
 * the longest call (a call of several sessions whole), map and cuvidDecodePicture. */
void nvdec_session_times(void *session, double *out) {
    Session *s = session;
    out[0] = s->in_calls;
    out[1] = s->in_map;
    out[2] = s->in_sync;
    out[3] = (double)s->calls;
    out[4] = (double)s->delivered;
    out[5] = s->in_picture;
    out[6] = s->in_create;
    out[7] = (double)s->creates;
    out[8] = s->longest_call;
    out[9] = s->longest_map;
    out[10] = s->longest_picture;
}

/* Start the session's clocks and counts of nvdec_session_times again from 0 (a measurement's
 * timed part). */
void nvdec_session_clear_times(void *session) {
    Session *s = session;
    s->in_calls = s->in_map = s->in_sync = s->in_picture = s->in_create = 0;
    s->longest_call = s->longest_map = s->longest_picture = 0;
    s->calls = s->delivered = s->creates = 0;
}

/* Why a session failed ("" where it has not). */
const char *nvdec_session_error(void *session) {
    return ((Session *)session)->error;
}

void nvdec_session_destroy(void *session) {
    Session *s = session;
    CUcontext popped;
    if (!s)
        return;
    if (s->parser)
        api.destroy_parser(s->parser);
    /* without its context (gone at the process's exit) the decoder is left to the driver */
    if (api.push_context(s->context) == 0) {
        if (s->decoder)
            api.destroy_decoder(s->decoder);
        api.pop_context(&popped);
    }
    free(s);
}

/* Decode surfaces of the decoder made so far (0 before the first sequence header). */
unsigned nvdec_session_surfaces(void *session) {
    return ((Session *)session)->surfaces;
}
