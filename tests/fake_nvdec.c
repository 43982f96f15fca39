/* A stand-in for NVIDIA's libnvcuvid and libcuda, built twice by tests/test_nvdec_session.py
 * (as libnvcuvid.so.1 and libcuda.so.1), so that our session library's own logic runs on a CPU:
 * which output goes to which pointer, the plane layout of its copies, its error paths. Host
 * memory plays device memory; copies are memcpy.
 *
 * The "bitstream" is records of 8 bytes:
 *   'S' w_lo w_hi h_lo h_hi surfaces bits 0: a sequence header (coded size rounded up to 16;
 *                                          display area w x h; bits: bit depth minus 8)
 *   'P' display status 0 0 0 0 0:          a picture, its display index in this stream and the
 *                                          decode status NVDEC reports for it
 * Pictures are displayed in display order as soon as all before them are decoded (display delay
 * 0); an end of stream displays the rest and starts a new stream. A surface is filled with its
 * picture: luma byte (row, column) = display + row + column, chroma = 128 + display + row.
 *
 * As on a GPU, a map post-processes the picture into one of the decoder's output surfaces (an
 * error where all are mapped) on its output stream, done only at that stream's sync; an unmap
 * gives that surface back (here it is overwritten at once, as the next map would); copies are
 * queued on their stream, done only at its sync: a frame unmapped before the sync that waits for
 * its copies reaches its pointer wrong. The parser decodes into its decode surfaces in turn, so a
 * picture's surface is written again a surfaces' count of pictures later: a map whose
 * post-processing is still queued by then reads the later picture.
 * fake_driver_counts() tells the maps, copies and syncs made so far. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "driver_types.h"

#define SURFACES 32
#define OUTPUTS 8
#define PITCH_PAD 64
#define QUEUED 4096

typedef struct {
    CUVIDPARSERPARAMS params;
    int shown, decoded[256], statuses[256], count;   /* this stream's pictures, by display */
    int surfaces;                                     /* the decoder's, from the sequence callback */
    int surface_of[256];
} Parser;

typedef struct {
    unsigned width, height, pitch, surface_height, outputs;
    unsigned char *surfaces[SURFACES], *output[OUTPUTS];
    int display_of[SURFACES], status_of[SURFACES], mapped[OUTPUTS];
} Decoder;

/* each library's own count (libnvcuvid's maps, libcuda's copies and syncs): out[0..2] */
static long long maps, copies, syncs;

/* libcuda's stream queue (below): work done at the stream's sync. Each library built from this
 * file has its own queue, so a map queues its post-processing on libcuda's. */
int fake_enqueue(const Copy2D *copy, CUstream stream);

static int cuda_enqueue(const Copy2D *copy, CUstream stream) {
    static int (*queue)(const Copy2D *, CUstream);
    if (!queue) {
        void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        queue = cuda ? (int (*)(const Copy2D *, CUstream))dlsym(cuda, "fake_enqueue") : NULL;
        if (!queue)
            return 1;
    }
    return queue(copy, stream);
}

void fake_driver_counts(long long *out) {
    out[0] += maps;
    out[1] += copies;
    out[2] += syncs;
}

/* pictures a decoder was given while a frame of it was mapped (libnvcuvid's): a session that
 * gives a frame back only before the next map lets the parser queue pictures meanwhile */
static long long decoded_while_mapped;

long long fake_decoded_while_mapped(void) {
    return decoded_while_mapped;
}

CUresult cuvidCreateVideoParser(CUvideoparser *out, CUVIDPARSERPARAMS *params) {
    Parser *p = calloc(1, sizeof *p);
    p->params = *params;
    *out = p;
    return 0;
}

CUresult cuvidDestroyVideoParser(CUvideoparser parser) {
    free(parser);
    return 0;
}

CUresult cuvidCreateDecoder(CUvideodecoder *out, CUVIDDECODECREATEINFO *info) {
    if (info->ulTargetWidth > 4096)
        return 1;   /* CUDA_ERROR_INVALID_VALUE: beyond this "GPU" */
    Decoder *d = calloc(1, sizeof *d);
    d->width = info->ulTargetWidth;
    d->height = info->ulTargetHeight;
    d->pitch = d->width + PITCH_PAD;
    d->surface_height = d->height;
    d->outputs = info->ulNumOutputSurfaces;
    if (d->outputs < 1 || d->outputs > OUTPUTS)
        return 1;
    for (int i = 0; i < SURFACES; i++)
        d->surfaces[i] = calloc((size_t)d->pitch * d->surface_height * 3 / 2 + d->pitch, 1);
    for (unsigned i = 0; i < d->outputs; i++)
        d->output[i] = calloc((size_t)d->pitch * d->surface_height * 3 / 2 + d->pitch, 1);
    *out = d;
    return 0;
}

CUresult cuvidDestroyDecoder(CUvideodecoder decoder) {
    Decoder *d = decoder;
    for (int i = 0; i < SURFACES; i++)
        free(d->surfaces[i]);
    for (unsigned i = 0; i < d->outputs; i++)
        free(d->output[i]);
    free(d);
    return 0;
}

CUresult cuvidDecodePicture(CUvideodecoder decoder, CUVIDPICPARAMS *picture) {
    Decoder *d = decoder;
    unsigned char *s = d->surfaces[picture->CurrPicIdx];
    for (unsigned i = 0; i < d->outputs; i++)
        if (d->mapped[i]) {
            decoded_while_mapped++;
            break;
        }
    /* the parser passes the picture's display index and status in fields this fake has no use
       for: each parser's pictures then go to their own decoder, with several sessions at once */
    int display = d->display_of[picture->CurrPicIdx] = picture->PicWidthInMbs;
    d->status_of[picture->CurrPicIdx] = picture->FrameHeightInMbs;
    for (unsigned row = 0; row < d->height; row++)
        for (unsigned column = 0; column < d->width; column++)
            s[row * d->pitch + column] = (unsigned char)(display + row + column);
    for (unsigned row = 0; row < d->height / 2; row++)
        memset(s + (d->surface_height + row) * d->pitch, 128 + display + (int)row, d->width);
    return 0;
}

CUresult cuvidGetDecodeStatus(CUvideodecoder decoder, int index, CUVIDGETDECODESTATUS *status) {
    status->decodeStatus = ((Decoder *)decoder)->status_of[index];
    return 0;
}

CUresult cuvidMapVideoFrame64(CUvideodecoder decoder, int index, unsigned long long *pointer,
                              unsigned int *pitch, CUVIDPROCPARAMS *params) {
    Decoder *d = decoder;
    for (unsigned i = 0; i < d->outputs; i++)
        if (!d->mapped[i]) {
            Copy2D post;    /* the post-processing, on the output stream */
            memset(&post, 0, sizeof post);
            post.srcDevice = (CUdeviceptr)(size_t)d->surfaces[index];
            post.dstDevice = (CUdeviceptr)(size_t)d->output[i];
            post.srcPitch = post.dstPitch = post.WidthInBytes = d->pitch;
            post.Height = (size_t)d->surface_height * 3 / 2;
            if (cuda_enqueue(&post, params->output_stream))
                return 2;   /* CUDA_ERROR_OUT_OF_MEMORY */
            d->mapped[i] = 1;
            *pointer = (unsigned long long)(size_t)d->output[i];
            *pitch = d->pitch;
            maps++;
            return 0;
        }
    return 205;   /* CUDA_ERROR_MAP_FAILED: every output surface is mapped */
}

CUresult cuvidUnmapVideoFrame64(CUvideodecoder decoder, unsigned long long pointer) {
    Decoder *d = decoder;
    for (unsigned i = 0; i < d->outputs; i++)
        if (d->mapped[i] && (unsigned long long)(size_t)d->output[i] == pointer) {
            d->mapped[i] = 0;
            memset(d->output[i], 0xEE, (size_t)d->pitch * d->surface_height * 3 / 2);
            return 0;
        }
    return 1;     /* CUDA_ERROR_INVALID_VALUE: not mapped */
}

static void show_ready(Parser *p, int all) {
    for (;;) {
        int next = -1;
        for (int d = p->shown; d < 256; d++)
            if (p->decoded[d]) { next = d; break; }
        if (next < 0 || (next != p->shown && !all))
            return;
        CUVIDPARSERDISPINFO info;
        memset(&info, 0, sizeof info);
        info.picture_index = p->surface_of[next];
        info.progressive_frame = 1;
        p->decoded[next] = 0;
        p->shown = next + 1;
        p->params.pfnDisplayPicture(p->params.pUserData, &info);
    }
}

CUresult cuvidParseVideoData(CUvideoparser parser, CUVIDSOURCEDATAPACKET *packet) {
    Parser *p = parser;
    const unsigned char *r = packet->payload;
    for (unsigned long at = 0; at + 8 <= packet->payload_size; at += 8, r += 8) {
        if (r[0] == 'S') {
            CUVIDEOFORMAT format;
            memset(&format, 0, sizeof format);
            int w = r[1] | r[2] << 8, h = r[3] | r[4] << 8;
            format.codec = p->params.CodecType;
            format.coded_width = (unsigned)(w + 15) / 16 * 16;
            format.coded_height = (unsigned)(h + 15) / 16 * 16;
            format.display_area.right = w;
            format.display_area.bottom = h;
            format.chroma_format = cudaVideoChromaFormat_420;
            format.bit_depth_luma_minus8 = format.bit_depth_chroma_minus8 = r[6];
            format.min_num_decode_surfaces = r[5];
            format.progressive_sequence = 1;
            int surfaces = p->params.pfnSequenceCallback(p->params.pUserData, &format);
            if (surfaces <= 0)
                return 0;    /* the driver's parser goes on; the client reports its error */
            p->surfaces = surfaces < SURFACES ? surfaces : SURFACES;
        } else if (r[0] == 'P') {
            int display = r[1], index = p->count++ % (p->surfaces ? p->surfaces : SURFACES);
            p->surface_of[display] = index;
            CUVIDPICPARAMS *picture = calloc(1, sizeof *picture);
            picture->CurrPicIdx = index;
            picture->PicWidthInMbs = display;
            picture->FrameHeightInMbs = r[2];
            int ok = p->params.pfnDecodePicture(p->params.pUserData, picture);
            free(picture);
            if (!ok)
                return 0;
            p->decoded[display] = 1;
            show_ready(p, 0);
        }
    }
    if (packet->flags & CUVID_PKT_ENDOFSTREAM) {
        show_ready(p, 1);
        p->shown = 0;
        p->count = 0;
    }
    return 0;
}

/* libcuda: copies queued by stream, done at its sync */
static struct { Copy2D copy; CUstream stream; } queued[QUEUED];
static int queued_count;

int fake_enqueue(const Copy2D *copy, CUstream stream) {
    if (queued_count == QUEUED)
        return 1;
    queued[queued_count].copy = *copy;
    queued[queued_count++].stream = stream;
    return 0;
}

CUresult cuMemcpy2DAsync_v2(const Copy2D *copy, CUstream stream) {
    if (fake_enqueue(copy, stream))
        return 2;   /* CUDA_ERROR_OUT_OF_MEMORY */
    copies++;
    return 0;
}

CUresult cuStreamSynchronize(CUstream stream) {
    int kept = 0;
    for (int i = 0; i < queued_count; i++) {
        const Copy2D *copy = &queued[i].copy;
        if (queued[i].stream != stream) {
            queued[kept++] = queued[i];
            continue;
        }
        for (size_t row = 0; row < copy->Height; row++)
            memcpy((void *)(size_t)(copy->dstDevice + row * copy->dstPitch),
                   (const void *)(size_t)(copy->srcDevice + row * copy->srcPitch),
                   copy->WidthInBytes);
    }
    queued_count = kept;
    syncs++;
    return 0;
}

CUresult cuCtxGetCurrent(CUcontext *context) {
    *context = (CUcontext)(size_t)1;
    return 0;
}

CUresult cuCtxPushCurrent_v2(CUcontext context) {
    (void)context;
    return 0;
}

CUresult cuCtxPopCurrent_v2(CUcontext *context) {
    *context = (CUcontext)(size_t)1;
    return 0;
}
