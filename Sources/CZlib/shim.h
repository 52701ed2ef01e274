#ifndef REGENT_CZLIB_SHIM_H
#define REGENT_CZLIB_SHIM_H
#include <zlib.h>

/* inflateInit2 is a macro Swift cannot call: gzip (and zlib) streams, auto-detected. */
static inline int regent_inflate_init(z_stream *stream) {
    return inflateInit2(stream, 15 + 32);
}
#endif
