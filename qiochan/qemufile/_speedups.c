/*
 * qiochan.qemufile._speedups: QEMUFile's core in C.
 *
 * QEMUFileCore is the C twin of qiochan/qemufile/_core.py (the reference,
 * the specification): the 32 KiB buffer, the read/write positions, the iovec
 * queue and the operations a migration stream calls once per value or page:
 *
 *     put_byte put_be16 put_be32 put_be64 put_buffer put_buffer_async
 *     get_byte get_be16 get_be32 get_be64 get_buffer_in_place
 *
 * plus the queue operations the Python mixins use (_put_bytes, _commit,
 * _flush, _pending, _discard_output, _refresh_fast).  The copy and value paths
 * handle the common case only and hand anything else (bad input, closed file,
 * latched error) to the Python slow path of the same name; the mixins give the
 * core its checks (_may_write, _writer_ok) and channel access (_send,
 * _release_pages, _joined_views, _read_into).
 *
 * The iovec queue is kept as QEMU's qemu-file.c keeps it (add_to_iovec,
 * add_buf_to_iovec, qemu_fflush): segments of the internal buffer as
 * (offset, length), caller buffers as pinned Py_buffers (PyObject_GetBuffer,
 * released by PyBuffer_Release after the flush), adjacent caller buffers of
 * one exporter coalesced into one iovec.  A flush builds the struct iovec
 * array itself and writes it with sendmsg/writev on the channel's
 * io_write_fd() without the GIL; Python memoryviews are made only when the
 * queue must go to a channel's Python io_writev (no fd, or a short write) or
 * to madvise (may_free).  Only CPython's public C API is used.
 *
 * Threads.  Using one QEMUFile from two threads at once is not supported (the
 * stream's bytes are then undefined), but it is memory-safe, with or without
 * the GIL: every read or change of the buffer and the queue runs inside a
 * per-object critical section (3.13+; the GIL before) with no call into
 * Python in between, positions are read once into locals and validated
 * before each access, nothing read before a call into Python is trusted
 * after it, and a flush first detaches the queue it writes (its pins are its
 * own until released), so another thread only ever sees an empty queue or
 * one it made.  The internal buffer is exported for the object's lifetime, so
 * it cannot move.  A thread that finds positions another one left
 * inconsistent gets RuntimeError.  Untested on a free-threaded build: none
 * could be installed where this was written (see the tests' Py_mod_gil check).
 *
 * Not built with Py_LIMITED_API: free-threaded builds (3.13t) refuse it
 * (Python.h stops with an #error), the critical-section API is not part of
 * it, and neither is PyObject_VectorcallMethod before 3.12 (the slow paths
 * would go through argument tuples).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IO_BUF_SIZE 32768
#define MAX_IOV_LIMIT 64
/* A queue holds at most MAX_IOV_LIMIT iovecs, plus the open segment a flush closes. */
#define QUEUE_CAP (MAX_IOV_LIMIT + 1)
#if defined(IOV_MAX) && IOV_MAX < QUEUE_CAP
#error "the iovec queue needs IOV_MAX >= MAX_IOV_LIMIT + 1"
#endif

/* Per-object critical sections on free-threaded builds (3.13+); the GIL before. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

/* _fast_end while a flush runs (see core_flush). */
#define FLUSHING (-1)

static Py_ssize_t max_iov_size = MAX_IOV_LIMIT;

/* Interned method names and width constants, made once at import. */
static PyObject *str_put_value, *str_put_buffer_slow, *str_get_value, *str_get_in_place_slow;
static PyObject *str_read_into, *str_ioc, *str_io_write_fd, *str_may_write, *str_writer_ok;
static PyObject *str_send, *str_release_pages, *str_joined_views, *str_obj, *str_async_name;
static PyObject *width_obj[9];

/* A caller buffer queued by put_buffer_async: pinned until its flush is over. */
typedef struct {
    Py_buffer view; /* PyObject_GetBuffer(arg, PyBUF_ND | PyBUF_FORMAT) */
    PyObject *arg;  /* the object put_buffer_async was given (a strong reference) */
} Pin;

/* One iovec: a segment of the internal buffer, or caller buffers joined end to end. */
typedef struct {
    Py_ssize_t offset; /* segment: offset in the internal buffer; -1 for caller buffers */
    char *base;        /* caller buffers: the first byte */
    Py_ssize_t len;
    Py_ssize_t npins; /* caller buffers: how many pins (in queue order) this iovec joins */
    int may_free;
} Entry;

typedef struct {
    int count;       /* entries */
    Py_ssize_t bytes; /* bytes in the entries */
    Entry entries[QUEUE_CAP];
    Pin *pins; /* the pins of the entries, in order */
    Py_ssize_t npins, cap;
} Queue;

typedef struct {
    PyObject_HEAD
    Py_ssize_t index;    /* write position (writer) or read position (reader) */
    Py_ssize_t size;     /* end of the buffered input (reader) */
    Py_ssize_t seg;      /* start of the writer's open buffer segment data[seg:index] */
    Py_ssize_t fast_end; /* writers take the fast path while index + n < fast_end */
    Py_ssize_t total;    /* bytes written to (or read from) the channel */
    char reading;        /* an open input stream: the fast paths may refill */
    PyObject *buf;       /* bytearray of IO_BUF_SIZE bytes */
    PyObject *view;      /* memoryview(buf) */
    Py_buffer export;    /* held for the object's lifetime: buf cannot be resized */
    unsigned char *data; /* export.buf */
    Queue queue;
} Core;

/* -- helpers ------------------------------------------------------------------ */

static PyObject *
call_method1(Core *self, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {(PyObject *)self, arg};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *
call_method2(Core *self, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {(PyObject *)self, a, b};
    return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The truth of self.name(arg) (no argument when arg is NULL): 1, 0, or -1 on exception. */
static int
call_predicate(Core *self, PyObject *name, PyObject *arg)
{
    PyObject *r = arg == NULL ? PyObject_CallMethodNoArgs((PyObject *)self, name)
                              : call_method1(self, name, arg);
    if (r == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    return truth;
}

static int
bad_state(void)
{
    PyErr_SetString(PyExc_RuntimeError, "QEMUFile: inconsistent buffer positions");
    return -1;
}

/*
 * Positions are read once into locals, validated, and only the locals are
 * used: Python code (another thread, a mixin) may store anything in _index,
 * _size or _fast_end at any time.
 */

/* True when the writer's positions i (index) and seg are usable. */
static inline int
positions_ok(Py_ssize_t seg, Py_ssize_t i)
{
    return seg >= 0 && seg <= i && i <= IO_BUF_SIZE;
}

/* The index n bytes can be written at on the fast path, or -1. */
static inline Py_ssize_t
write_at(Core *self, Py_ssize_t n)
{
    Py_ssize_t i = self->index, end = self->fast_end, seg = self->seg;
    return positions_ok(seg, i) && i < end && end <= IO_BUF_SIZE && n < end - i ? i : -1;
}

/* The index n bytes can be read at on the fast path, or -1. */
static inline Py_ssize_t
read_at(Core *self, Py_ssize_t n)
{
    Py_ssize_t i = self->index, size = self->size;
    return i >= 0 && i <= size && size <= IO_BUF_SIZE && n <= size - i ? i : -1;
}

/* -- the queue ---------------------------------------------------------------- */

static void
queue_init(Queue *q)
{
    q->count = 0;
    q->bytes = 0;
    q->pins = NULL;
    q->npins = 0;
    q->cap = 0;
}

/* Release n pins (this may run Python code: exporters' release hooks). */
static void
release_pins(Pin *pins, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        PyBuffer_Release(&pins[k].view);
        Py_DECREF(pins[k].arg);
    }
}

/* Release the pins of q, a queue no one else sees, and free its array. */
static void
queue_release(Queue *q)
{
    Pin *pins = q->pins;
    Py_ssize_t npins = q->npins;
    queue_init(q);
    release_pins(pins, npins);
    PyMem_Free(pins);
}

/*
 * Release the pins of a flushed batch and give its pin array back to self
 * for the next batch, unless self has one again (another thread queued).
 */
static void
queue_recycle(Core *self, Queue *batch)
{
    Pin *pins = batch->pins;
    Py_ssize_t npins = batch->npins, cap = batch->cap;
    queue_init(batch);
    release_pins(pins, npins);
    if (pins != NULL && self->queue.pins == NULL) {
        self->queue.pins = pins;
        self->queue.cap = cap;
    }
    else {
        PyMem_Free(pins);
    }
}

/* Take self's queue into out (self's is left empty); a flush writes out alone. */
static void
queue_detach(Core *self, Queue *out)
{
    Queue *q = &self->queue;
    out->count = q->count;
    out->bytes = q->bytes;
    memcpy(out->entries, q->entries, (size_t)q->count * sizeof(Entry)); /* the used ones only */
    out->pins = q->pins;
    out->npins = q->npins;
    out->cap = q->cap;
    queue_init(q);
}

/* Room for one more pin; -1 with MemoryError. */
static int
queue_reserve_pin(Queue *q)
{
    if (q->npins < q->cap) {
        return 0;
    }
    Py_ssize_t cap = q->cap ? 2 * q->cap : MAX_IOV_LIMIT;
    Pin *pins = PyMem_Realloc(q->pins, (size_t)cap * sizeof(Pin));
    if (pins == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->pins = pins;
    q->cap = cap;
    return 0;
}

/* Queue the segment data[offset:offset+len] (there is room: see QUEUE_CAP). */
static void
queue_segment(Queue *q, Py_ssize_t offset, Py_ssize_t len)
{
    Entry *e = &q->entries[q->count++];
    e->offset = offset;
    e->base = NULL;
    e->len = len;
    e->npins = 0;
    e->may_free = 0;
    q->bytes += len;
}

/* The object whose memory arg's buffer is (memoryview.obj for a view): new reference. */
static PyObject *
exporter_of(PyObject *arg)
{
    if (PyMemoryView_Check(arg)) {
        return PyObject_GetAttr(arg, str_obj);
    }
    return Py_NewRef(arg);
}

/* True when pin starts where the last entry of q, caller buffers alike in may_free, ends. */
static int
adjacent_to_last(Queue *q, Pin *pin, int may_free)
{
    if (q->count == 0) {
        return 0;
    }
    Entry *last = &q->entries[q->count - 1];
    return last->offset < 0 && last->may_free == may_free && last->npins <= q->npins
        && last->base + last->len == (char *)pin->view.buf;
}

/* The first pin of the last entry of q (adjacent_to_last(q, ...) is true). */
static Pin *
last_entry_pin(Queue *q)
{
    return &q->pins[q->npins - q->entries[q->count - 1].npins];
}

/*
 * True when pin extends the last entry of q as QEMU's add_to_iovec coalesces:
 * adjacent (see adjacent_to_last) and, as the Python core needs to join views,
 * of the same exporter, which is not this file's own buffer.  -1 on exception.
 * Looking up exporters may let another thread in: the queue is checked again.
 */
static int
extends_last(Core *self, Queue *q, Pin *pin, int may_free)
{
    if (!adjacent_to_last(q, pin, may_free)) {
        return 0;
    }
    PyObject *prev = Py_NewRef(last_entry_pin(q)->arg);
    PyObject *a = exporter_of(prev);
    PyObject *b = a == NULL ? NULL : exporter_of(pin->arg);
    int same = b != NULL && a == b && a != self->buf && adjacent_to_last(q, pin, may_free)
        && last_entry_pin(q)->arg == prev;
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_DECREF(prev);
    return b == NULL ? -1 : same;
}

/* Byte views of q's entries (all, or the may_free ones): a new list, NULL on exception. */
static PyObject *
queue_views(Core *self, Queue *q, int only_may_free)
{
    PyObject *views = PyList_New(0);
    if (views == NULL) {
        return NULL;
    }
    Py_ssize_t first_pin = 0;
    for (int k = 0; k < q->count; k++) {
        Entry *e = &q->entries[k];
        Py_ssize_t pins = e->npins;
        first_pin += pins;
        if (only_may_free && !e->may_free) {
            continue;
        }
        if (e->offset >= 0) {
            PyObject *segment = PySequence_GetSlice(self->view, e->offset, e->offset + e->len);
            if (segment == NULL || PyList_Append(views, segment) < 0) {
                Py_XDECREF(segment);
                goto fail;
            }
            Py_DECREF(segment);
            continue;
        }
        Pin *pin = &q->pins[first_pin - pins];
        if (pins == 1 && PyMemoryView_Check(pin->arg) && pin->view.ndim == 1
            && (pin->view.format == NULL || strcmp(pin->view.format, "B") == 0)) {
            if (PyList_Append(views, pin->arg) < 0) { /* the caller's own byte view */
                goto fail;
            }
            continue;
        }
        if (pins == 1 && (PyBytes_CheckExact(pin->arg) || PyByteArray_CheckExact(pin->arg))) {
            PyObject *view = PyMemoryView_FromObject(pin->arg); /* all of it: what was pinned */
            if (view == NULL || PyList_Append(views, view) < 0) {
                Py_XDECREF(view);
                goto fail;
            }
            Py_DECREF(view);
            continue;
        }
        PyObject *args = PyTuple_New(pins);
        if (args == NULL) {
            goto fail;
        }
        for (Py_ssize_t p = 0; p < pins; p++) {
            PyTuple_SET_ITEM(args, p, Py_NewRef(pin[p].arg));
        }
        PyObject *joined = call_method1(self, str_joined_views, args);
        Py_DECREF(args);
        if (joined == NULL) {
            goto fail;
        }
        Py_ssize_t end = PyList_GET_SIZE(views);
        int rc = PyList_SetSlice(views, end, end, joined);
        Py_DECREF(joined);
        if (rc < 0) {
            goto fail;
        }
    }
    return views;
fail:
    Py_DECREF(views);
    return NULL;
}

/* -- flushing ------------------------------------------------------------------- */

/* The fd io_write_fd() returned, or -1 for anything that is not one. */
static int
as_write_fd(PyObject *fdobj)
{
    long fd = PyLong_Check(fdobj) ? PyLong_AsLong(fdobj) : -1;
    if (fd == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    return fd >= 0 && fd <= INT_MAX ? (int)fd : -1;
}

/*
 * Write q to fd with one system call, the GIL released: sendmsg(2) with
 * MSG_NOSIGNAL, or writev(2) when fd is not a socket (ENOTSOCK), as the socket
 * and file channels' io_writev do.  q is detached (see queue_detach): its
 * pins are this flush's alone, and the internal buffer lives as long as self.
 * Returns the bytes written: 0 after an error, EINTR or EAGAIN, which the
 * caller's normal path (_send) then handles exactly as the channel does.
 */
static Py_ssize_t
write_queue(Core *self, int fd, Queue *q)
{
    struct iovec vec[QUEUE_CAP];
    ssize_t r;
    for (int k = 0; k < q->count; k++) {
        Entry *e = &q->entries[k];
        vec[k].iov_base = e->offset >= 0 ? (void *)(self->data + e->offset) : (void *)e->base;
        vec[k].iov_len = (size_t)e->len;
    }
    Py_BEGIN_ALLOW_THREADS
    struct msghdr msg = {.msg_iov = vec, .msg_iovlen = (size_t)q->count};
    r = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (r < 0 && errno == ENOTSOCK) {
        r = writev(fd, vec, q->count);
    }
    Py_END_ALLOW_THREADS
    return r > 0 ? (Py_ssize_t)r : 0;
}

/*
 * Open or close the writers' fast path, as _core.QEMUFileCore._refresh_fast.
 * Returns 1 when the writer is healthy (open, error-free), 0 when not, -1 on exception.
 */
static int
refresh_fast(Core *self)
{
    int ok = call_predicate(self, str_writer_ok, NULL);
    if (ok < 0) {
        return -1;
    }
    if (!ok) {
        self->fast_end = 0;
    }
    else if (self->index > self->seg || self->queue.count < max_iov_size - 1) {
        self->fast_end = IO_BUF_SIZE;
    }
    else {
        self->fast_end = 0;
    }
    return ok;
}

/* Hand the views of q to self._send(views, pending, written), written None or an int. */
static int
send_views(Core *self, Queue *q, Py_ssize_t pending, Py_ssize_t written)
{
    PyObject *views = queue_views(self, q, 0);
    if (views == NULL) {
        return -1;
    }
    PyObject *args[4] = {(PyObject *)self, views, PyLong_FromSsize_t(pending),
                         written < 0 ? Py_NewRef(Py_None) : PyLong_FromSsize_t(written)};
    PyObject *r = NULL;
    if (args[2] != NULL && args[3] != NULL) {
        r = PyObject_VectorcallMethod(str_send, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(views);
    Py_XDECREF(args[2]);
    Py_XDECREF(args[3]);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Hand the may_free regions of q to self._release_pages (QEMU's qemu_iovec_release_ram). */
static int
release_pages(Core *self, Queue *q)
{
    int any = 0;
    for (int k = 0; k < q->count; k++) {
        any |= q->entries[k].may_free;
    }
    if (!any) {
        return 0;
    }
    PyObject *regions = queue_views(self, q, 1);
    if (regions == NULL) {
        return -1;
    }
    PyObject *r = call_method1(self, str_release_pages, regions);
    Py_DECREF(regions);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/*
 * QEMU's qemu_fflush for an open, error-free writer, as _core's _flush: close
 * the open segment, detach the queue (the file is empty again whatever the
 * write does), write it directly on io_write_fd() when the channel has one,
 * through self._send otherwise or for what a direct write left, release
 * may_free pages, drop the pins, refresh the fast path.
 *
 * io_write_fd() is asked before the queue is detached, so no Python code runs
 * between the detach and a direct write.  _fast_end holds FLUSHING meanwhile:
 * the fast paths stay closed, and anything that latches an error or closes
 * the file (which set _fast_end to 0) shows, so that only then the Python
 * _writer_ok must be asked again.
 * Returns 1 when the writer is still healthy, 0 when not, -1 on exception.
 */
static int
core_flush(Core *self)
{
    Queue batch;
    int fd = -1, rc = 0;
    PyObject *ioc = PyObject_GetAttr((PyObject *)self, str_ioc);
    if (ioc == NULL) {
        return -1;
    }
    PyObject *fdobj = PyObject_CallMethodNoArgs(ioc, str_io_write_fd);
    Py_DECREF(ioc);
    if (fdobj == NULL) {
        return -1;
    }
    fd = as_write_fd(fdobj);
    Py_DECREF(fdobj); /* an int: frees nothing that runs code */

    int valid;
    Py_BEGIN_CRITICAL_SECTION(self);
    Py_ssize_t i = self->index, seg = self->seg;
    valid = positions_ok(seg, i) && self->queue.count < QUEUE_CAP;
    if (valid) {
        if (i > seg) {
            queue_segment(&self->queue, seg, i - seg);
        }
        queue_detach(self, &batch);
        self->index = self->seg = 0;
        self->fast_end = FLUSHING;
    }
    Py_END_CRITICAL_SECTION();
    if (!valid) {
        return bad_state();
    }
    Py_ssize_t pending = batch.bytes;
    if (batch.count > 0) {
        Py_ssize_t done = fd >= 0 ? write_queue(self, fd, &batch) : -1;
        if (done == pending) {
            self->total = self->total <= PY_SSIZE_T_MAX - pending ? self->total + pending
                                                                  : PY_SSIZE_T_MAX;
        }
        else {
            rc = send_views(self, &batch, pending, done);
        }
        if (rc == 0) {
            rc = release_pages(self, &batch);
        }
    }
    queue_recycle(self, &batch);
    if (rc < 0) {
        return -1;
    }
    if (self->fast_end == FLUSHING) { /* nothing latched an error or closed the file */
        self->fast_end = IO_BUF_SIZE;
        return 1;
    }
    return refresh_fast(self);
}

/*
 * Account n bytes just written at i (seg and i validated, i + n <= IO_BUF_SIZE),
 * as add_buf_to_iovec: returns 1 when that filled the buffer or opened the
 * last iovec allowed, so that the caller must flush.
 */
static int
add_internal(Core *self, Py_ssize_t seg, Py_ssize_t i, Py_ssize_t n)
{
    int opens_iovec = i == seg;
    self->index = i + n;
    return (opens_iovec && self->queue.count + 1 >= max_iov_size) || i + n == IO_BUF_SIZE;
}

/*
 * Copy n bytes at src through the buffer, flushing each time it fills (and
 * when a new segment is the 64th iovec), as _core's _put_bytes.  Stops early
 * (dropping the rest, as QEMU does) when a flush leaves the writer unhealthy.
 */
static int
put_copy(Core *self, const char *src, Py_ssize_t n)
{
    while (n > 0) {
        Py_ssize_t i = self->index, seg = self->seg;
        if (!positions_ok(seg, i) || i == IO_BUF_SIZE || self->queue.count >= QUEUE_CAP) {
            return bad_state();
        }
        Py_ssize_t chunk = IO_BUF_SIZE - i < n ? IO_BUF_SIZE - i : n;
        memmove(self->data + i, src, (size_t)chunk); /* src may be our own buffer */
        src += chunk;
        n -= chunk;
        if (add_internal(self, seg, i, chunk)) {
            int ok = core_flush(self);
            if (ok <= 0) {
                return ok;
            }
        }
    }
    return 0;
}

/* -- writers ---------------------------------------------------------------------- */

static PyObject *
put_value(Core *self, PyObject *v, int width)
{
    int done = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    Py_ssize_t i = PyLong_Check(v) ? write_at(self, width) : -1;
    if (i >= 0) {
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or too large: the slow path raises the error */
        }
        else if (width == 8 || (x >> (8 * width)) == 0) {
            unsigned char *p = self->data + i;
            for (int k = width - 1; k >= 0; k--) {
                p[k] = (unsigned char)(x & 0xff);
                x >>= 8;
            }
            self->index = i + width;
            done = 1;
        }
    }
    Py_END_CRITICAL_SECTION();
    if (done) {
        Py_RETURN_NONE;
    }
    return call_method2(self, str_put_value, width_obj[width], v);
}

/* One METH_O entry point per width: put_byte, put_be16, put_be32, put_be64. */
#define VALUE_WRITER(name, width) \
    static PyObject *Core_##name(Core *self, PyObject *v) { return put_value(self, v, width); }
VALUE_WRITER(put_byte, 1)
VALUE_WRITER(put_be16, 2)
VALUE_WRITER(put_be32, 4)
VALUE_WRITER(put_be64, 8)

static PyObject *
Core_put_buffer(Core *self, PyObject *buf)
{
    if (self->fast_end > 0) {
        Py_buffer src;
        if (PyObject_GetBuffer(buf, &src, PyBUF_SIMPLE) == 0) {
            int done = 1, rc = 0;
            Py_BEGIN_CRITICAL_SECTION(self);
            Py_ssize_t i = write_at(self, src.len);
            if (i >= 0) {
                memmove(self->data + i, src.buf, (size_t)src.len); /* may be our own buffer */
                self->index = i + src.len;
            }
            else if (self->fast_end == IO_BUF_SIZE) {
                rc = put_copy(self, src.buf, src.len);
            }
            else {
                done = 0;
            }
            Py_END_CRITICAL_SECTION();
            PyBuffer_Release(&src);
            if (rc < 0) {
                return NULL;
            }
            if (done) {
                Py_RETURN_NONE;
            }
        }
        else if (PyErr_ExceptionMatches(PyExc_TypeError)
                 || PyErr_ExceptionMatches(PyExc_BufferError)
                 || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear(); /* not a simple buffer: the slow path decides */
        }
        else {
            return NULL;
        }
    }
    return call_method1(self, str_put_buffer_slow, buf);
}

/* Pin buf as put_buffer_async needs it; -1 with the Python core's exception. */
static int
pin_buffer(PyObject *buf, Pin *pin)
{
    if (PyObject_GetBuffer(buf, &pin->view, PyBUF_ND | PyBUF_FORMAT) == 0) {
        pin->arg = Py_NewRef(buf);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "put_buffer_async needs a bytes-like object, not %s",
                     Py_TYPE(buf)->tp_name);
    }
    else if (PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "put_buffer_async needs a C-contiguous buffer");
    }
    return -1;
}

/* Release a pin that was not queued. */
static void
unpin(Pin *pin)
{
    PyBuffer_Release(&pin->view);
    Py_DECREF(pin->arg);
}

/*
 * Queue the pinned buffer (ownership passes to the queue on success), as
 * _core's put_buffer_async: close the open segment, coalesce or append,
 * count, flush at MAX_IOV_SIZE.  -1 on exception (the pin is then released).
 */
static int
queue_buffer(Core *self, Pin *pin, int may_free, int *flush)
{
    Queue *q = &self->queue;
    int extend = self->index == self->seg ? extends_last(self, q, pin, may_free) : 0;
    if (extend < 0) {
        unpin(pin);
        return -1;
    }
    /* read after extends_last, which may have let another thread in */
    Py_ssize_t i = self->index, seg = self->seg, n = pin->view.len;
    if (!positions_ok(seg, i) || q->count + 2 > QUEUE_CAP) {
        unpin(pin);
        return bad_state();
    }
    if (queue_reserve_pin(q) < 0) {
        unpin(pin);
        return -1;
    }
    if (extend) {
        q->entries[q->count - 1].len += n;
        q->entries[q->count - 1].npins++;
        q->pins[q->npins++] = *pin;
        q->bytes += n;
        goto count;
    }
    if (i > seg) {
        queue_segment(q, seg, i - seg);
        self->seg = i;
    }
    Entry *e = &q->entries[q->count++];
    e->offset = -1;
    e->base = pin->view.buf;
    e->len = n;
    e->npins = 1;
    e->may_free = may_free;
    q->pins[q->npins++] = *pin;
    q->bytes += n;
count:
    if (q->count >= max_iov_size - 1) {
        if (q->count >= max_iov_size) {
            *flush = 1;
        }
        else {
            self->fast_end = 0;
        }
    }
    return 0;
}

static PyObject *
Core_put_buffer_async(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "may_free"};
    PyObject *given[2] = {NULL, NULL};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2 || nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "put_buffer_async() takes at most 2 arguments");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nargs; k++) {
        given[k] = args[k];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        const char *key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
        int slot = key == NULL ? -1 : strcmp(key, names[0]) == 0 ? 0
                                    : strcmp(key, names[1]) == 0 ? 1
                                                                 : -1;
        if (slot < 0 || given[slot] != NULL) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "put_buffer_async() got an unexpected or "
                                              "repeated keyword argument");
            }
            return NULL;
        }
        given[slot] = args[nargs + k];
    }
    if (given[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "put_buffer_async() missing required argument 'buf'");
        return NULL;
    }
    int may_free = given[1] == NULL ? 0 : PyObject_IsTrue(given[1]);
    if (may_free < 0) {
        return NULL;
    }

    Pin pin;
    if (pin_buffer(given[0], &pin) < 0) {
        return NULL;
    }
    if (self->fast_end <= 0) {
        int ok = call_predicate(self, str_may_write, str_async_name);
        if (ok <= 0) {
            unpin(&pin);
            if (ok < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    if (pin.view.len == 0) {
        unpin(&pin);
        Py_RETURN_NONE;
    }
    int rc, flush = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    rc = queue_buffer(self, &pin, may_free, &flush);
    Py_END_CRITICAL_SECTION();
    if (rc < 0) {
        return NULL;
    }
    if (flush && core_flush(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- the queue operations of the mixins -------------------------------------------- */

static PyObject *
Core__put_bytes(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer src;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_put_bytes(data, n)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int rc = n < 0 || n > src.len ? bad_state() : 0;
    if (rc == 0) {
        Py_BEGIN_CRITICAL_SECTION(self);
        rc = put_copy(self, src.buf, n);
        Py_END_CRITICAL_SECTION();
    }
    PyBuffer_Release(&src);
    if (rc < 0 || refresh_fast(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core__commit(Core *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int valid, flush = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    Py_ssize_t i = self->index, seg = self->seg;
    valid = n >= 0 && positions_ok(seg, i) && n <= IO_BUF_SIZE - i;
    if (valid) {
        flush = add_internal(self, seg, i, n);
    }
    Py_END_CRITICAL_SECTION();
    if (!valid) {
        bad_state();
        return NULL;
    }
    if ((flush && core_flush(self) < 0) || refresh_fast(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core__flush(Core *self, PyObject *Py_UNUSED(ignored))
{
    if (core_flush(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core__pending(Core *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t pending;
    Py_BEGIN_CRITICAL_SECTION(self);
    Py_ssize_t i = self->index, seg = self->seg;
    pending = self->queue.bytes + (positions_ok(seg, i) ? i - seg : 0);
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSsize_t(pending);
}

static PyObject *
Core__discard_output(Core *self, PyObject *Py_UNUSED(ignored))
{
    Queue dropped;
    Py_BEGIN_CRITICAL_SECTION(self);
    queue_detach(self, &dropped);
    self->index = self->seg = 0;
    Py_END_CRITICAL_SECTION();
    queue_release(&dropped);
    if (refresh_fast(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core__refresh_fast(Core *self, PyObject *Py_UNUSED(ignored))
{
    if (refresh_fast(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- readers ------------------------------------------------------------------------- */

/*
 * Refill until need bytes are buffered, as the slow path's _ensure/_fill do:
 * move the unread bytes to the front, then _read_into the rest of the buffer.
 * Returns 1 when they are, 0 when the slow path must take over (not an open
 * reader, or the read failed or ended: the error is latched), -1 on exception.
 */
static int
refill(Core *self, Py_ssize_t need)
{
    if (!self->reading || need > IO_BUF_SIZE) {
        return 0;
    }
    while (read_at(self, need) < 0) {
        Py_ssize_t pending;
        int valid;
        Py_BEGIN_CRITICAL_SECTION(self);
        Py_ssize_t i = self->index, size = self->size;
        valid = i >= 0 && i <= size && size <= IO_BUF_SIZE;
        pending = size - i;
        if (valid && i > 0) {
            memmove(self->data, self->data + i, (size_t)pending);
            self->index = 0;
            self->size = pending;
        }
        Py_END_CRITICAL_SECTION();
        if (!valid) {
            return 0;
        }
        PyObject *target = PySequence_GetSlice(self->view, pending, IO_BUF_SIZE);
        if (target == NULL) {
            return -1;
        }
        PyObject *r = call_method1(self, str_read_into, target);
        Py_DECREF(target);
        if (r == NULL) {
            return -1;
        }
        Py_ssize_t n = PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (n <= 0 || n > IO_BUF_SIZE - pending) {
            return 0;
        }
        self->size = pending + n;
    }
    return 1;
}

/* Read width bytes big-endian at index into *out; 1 when done, 0 when not there. */
static int
take_value(Core *self, int width, unsigned long long *out)
{
    int done = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    Py_ssize_t i = read_at(self, width);
    if (i >= 0) {
        const unsigned char *p = self->data + i;
        unsigned long long x = 0;
        for (int k = 0; k < width; k++) {
            x = (x << 8) | p[k];
        }
        self->index = i + width;
        *out = x;
        done = 1;
    }
    Py_END_CRITICAL_SECTION();
    return done;
}

static PyObject *
get_value(Core *self, int width)
{
    unsigned long long x;
    while (!take_value(self, width, &x)) {
        int rc = refill(self, width);
        if (rc < 0) {
            return NULL;
        }
        if (rc == 0) {
            return call_method1(self, str_get_value, width_obj[width]);
        }
    }
    return PyLong_FromUnsignedLongLong(x);
}

/* One METH_NOARGS entry point per width: get_byte, get_be16, get_be32, get_be64. */
#define VALUE_READER(name, width) \
    static PyObject *Core_##name(Core *self, PyObject *Py_UNUSED(ignored)) \
    { \
        return get_value(self, width); \
    }
VALUE_READER(get_byte, 1)
VALUE_READER(get_be16, 2)
VALUE_READER(get_be32, 4)
VALUE_READER(get_be64, 8)

static PyObject *
Core_get_buffer_in_place(Core *self, PyObject *arg)
{
    if (PyLong_CheckExact(arg)) {
        Py_ssize_t n = PyLong_AsSsize_t(arg);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (n > 0 && n <= IO_BUF_SIZE) {
            for (;;) {
                Py_ssize_t i;
                Py_BEGIN_CRITICAL_SECTION(self);
                i = read_at(self, n);
                if (i >= 0) {
                    self->index = i + n;
                }
                Py_END_CRITICAL_SECTION();
                if (i >= 0) {
                    return PySequence_GetSlice(self->view, i, i + n);
                }
                int rc = n < IO_BUF_SIZE ? refill(self, n) : 0;
                if (rc < 0) {
                    return NULL;
                }
                if (rc == 0) {
                    break;
                }
            }
        }
    }
    return call_method1(self, str_get_in_place_slow, arg);
}

/* -- the type -------------------------------------------------------------------------- */

static PyObject *
Core_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    queue_init(&self->queue);
    self->buf = PyByteArray_FromStringAndSize(NULL, IO_BUF_SIZE);
    if (self->buf == NULL) {
        goto fail;
    }
    if (PyObject_GetBuffer(self->buf, &self->export, PyBUF_WRITABLE) < 0) {
        goto fail;
    }
    self->data = self->export.buf;
    memset(self->data, 0, IO_BUF_SIZE);
    self->view = PyMemoryView_FromObject(self->buf);
    if (self->view == NULL) {
        goto fail;
    }
    return (PyObject *)self;

fail:
    Py_DECREF(self);
    return NULL;
}

static int
Core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->view);
    for (Py_ssize_t k = 0; k < self->queue.npins; k++) {
        Py_VISIT(self->queue.pins[k].arg);
    }
    return 0;
}

static int
Core_clear(Core *self)
{
    Queue dropped;
    queue_detach(self, &dropped);
    queue_release(&dropped);
    return 0;
}

static void
Core_dealloc(Core *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_CLEAR(self->view);
    if (self->data != NULL) {
        self->data = NULL;
        PyBuffer_Release(&self->export);
    }
    Py_CLEAR(self->buf);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

#define WRITER_ENTRY(name, what) {#name, (PyCFunction)Core_##name, METH_O, WRITER_DOC(#name, what)}
#define READER_ENTRY(name, what) \
    {#name, (PyCFunction)Core_##name, METH_NOARGS, READER_DOC(#name, what)}
#define WRITER_DOC(name, what) \
    PyDoc_STR(name "($self, v, /)\n--\n\nWrite ``v`` as " what ".\n\n" \
              "Raises:\n    ValueError: ``v`` is out of range (nothing is written).\n" \
              "    TypeError: ``v`` is not an integer.\n" \
              "    ChannelError: the file is closed or is an input stream.")
#define READER_DOC(name, what) \
    PyDoc_STR(name "($self, /)\n--\n\nRead " what ".\n\n" \
              "Returns:\n    The value; bytes missing at end of file or after an error read\n" \
              "    as 0 (the error is latched).\n" \
              "Raises:\n    ChannelError: the file is closed or is an output stream.")

static PyMethodDef Core_methods[] = {
    WRITER_ENTRY(put_byte, "one byte"),
    WRITER_ENTRY(put_be16, "a big-endian 16-bit value"),
    WRITER_ENTRY(put_be32, "a big-endian 32-bit value"),
    WRITER_ENTRY(put_be64, "a big-endian 64-bit value"),
    {"put_buffer", (PyCFunction)Core_put_buffer, METH_O,
     PyDoc_STR("put_buffer($self, buf, /)\n--\n\n"
               "Copy the bytes-like ``buf`` into the stream.\n\n"
               "Raises:\n    TypeError: ``buf`` is not a bytes-like object.\n"
               "    ChannelError: the file is closed or is an input stream.")},
    {"put_buffer_async", (PyCFunction)(void (*)(void))Core_put_buffer_async,
     METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("put_buffer_async($self, buf, may_free=False)\n--\n\n"
               "Queue ``buf`` itself (no copy) to be sent by the next flush.\n\n"
               "The caller must keep ``buf`` unchanged until the next flush; the core\n"
               "holds it until then.  Adjacent buffers of one exporter share an iovec;\n"
               "with ``may_free``, whole pages of an ``mmap``-backed ``buf`` are\n"
               "released after the flush.\n\n"
               "Raises:\n    TypeError: ``buf`` is not a C-contiguous bytes-like object.\n"
               "    ChannelError: the file is closed or is an input stream.")},
    READER_ENTRY(get_byte, "one byte"),
    READER_ENTRY(get_be16, "a big-endian 16-bit value"),
    READER_ENTRY(get_be32, "a big-endian 32-bit value"),
    READER_ENTRY(get_be64, "a big-endian 64-bit value"),
    {"get_buffer_in_place", (PyCFunction)Core_get_buffer_in_place, METH_O,
     PyDoc_STR("get_buffer_in_place($self, size, /)\n--\n\n"
               "Read ``size`` bytes, returning a view into the internal buffer when possible.\n\n"
               "Returns:\n    A view of the bytes read: ``size`` of them, fewer at end of file or\n"
               "    on error.  A view of the internal buffer is valid until the next operation.\n"
               "Raises:\n    ValueError: ``size`` is negative.\n"
               "    ChannelError: the file is closed or is an output stream.")},
    {"_put_bytes", (PyCFunction)(void (*)(void))Core__put_bytes, METH_FASTCALL,
     PyDoc_STR("_put_bytes($self, data, n, /)\n--\n\n"
               "Copy n bytes of data through the buffer (an open, error-free writer).")},
    {"_commit", (PyCFunction)Core__commit, METH_O,
     PyDoc_STR("_commit($self, n, /)\n--\n\nAccount n bytes written at _index.")},
    {"_flush", (PyCFunction)Core__flush, METH_NOARGS,
     PyDoc_STR("_flush($self, /)\n--\n\nSend every queued iovec (an open, error-free writer).")},
    {"_pending", (PyCFunction)Core__pending, METH_NOARGS,
     PyDoc_STR("_pending($self, /)\n--\n\nReturn the bytes queued for the next flush.")},
    {"_discard_output", (PyCFunction)Core__discard_output, METH_NOARGS,
     PyDoc_STR("_discard_output($self, /)\n--\n\nForget everything queued.")},
    {"_refresh_fast", (PyCFunction)Core__refresh_fast, METH_NOARGS,
     PyDoc_STR("_refresh_fast($self, /)\n--\n\nOpen or close the writers' fast path.")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Core_members[] = {
    {"_index", T_PYSSIZET, offsetof(Core, index), 0, NULL},
    {"_size", T_PYSSIZET, offsetof(Core, size), 0, NULL},
    {"_fast_end", T_PYSSIZET, offsetof(Core, fast_end), 0, NULL},
    {"_total", T_PYSSIZET, offsetof(Core, total), 0, NULL},
    {"_reading", T_BOOL, offsetof(Core, reading), 0, NULL},
    {"_buf", T_OBJECT, offsetof(Core, buf), READONLY, NULL},
    {"_view", T_OBJECT, offsetof(Core, view), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Core_slots[] = {
    {Py_tp_doc, PyDoc_STR("The state, fast paths and iovec queue of a QEMUFile (C core).")},
    {Py_tp_new, Core_new},
    {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},
    {Py_tp_members, Core_members},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "qiochan.qemufile._speedups.QEMUFileCore",
    .basicsize = sizeof(Core),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Core_slots,
};

/* -- the module ---------------------------------------------------------------------- */

static int
intern_names(void)
{
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&str_put_value, "_put_value"},
        {&str_put_buffer_slow, "_put_buffer_slow"},
        {&str_get_value, "_get_value"},
        {&str_get_in_place_slow, "_get_in_place_slow"},
        {&str_read_into, "_read_into"},
        {&str_ioc, "_ioc"},
        {&str_io_write_fd, "io_write_fd"},
        {&str_may_write, "_may_write"},
        {&str_writer_ok, "_writer_ok"},
        {&str_send, "_send"},
        {&str_release_pages, "_release_pages"},
        {&str_joined_views, "_joined_views"},
        {&str_obj, "obj"},
        {&str_async_name, "put_buffer_async"},
    };
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (*names[k].slot == NULL) {
            *names[k].slot = PyUnicode_InternFromString(names[k].name);
            if (*names[k].slot == NULL) {
                return -1;
            }
        }
    }
    for (int w = 1; w <= 8; w++) {
        if (width_obj[w] == NULL && (width_obj[w] = PyLong_FromLong(w)) == NULL) {
            return -1;
        }
    }
    return 0;
}

static int
speedups_exec(PyObject *module)
{
    long iov_max = sysconf(_SC_IOV_MAX);
    max_iov_size = (iov_max > 0 && iov_max < MAX_IOV_LIMIT) ? iov_max : MAX_IOV_LIMIT;
    if (intern_names() < 0) {
        return -1;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &Core_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "QEMUFileCore", type);
    Py_DECREF(type);
    if (rc < 0 || PyModule_AddIntConstant(module, "IO_BUF_SIZE", IO_BUF_SIZE) < 0
        || PyModule_AddIntConstant(module, "MAX_IOV_SIZE", max_iov_size) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    /* no Py_mod_multiple_interpreters: the default refuses interpreters with a
     * GIL of their own, which the process-wide interned names below need */
#ifdef Py_mod_gil
    /* safe without the GIL: see "Threads" at the top of this file */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qiochan.qemufile._speedups",
    .m_doc = "QEMUFile's core in C (qiochan/qemufile/_core.py is the Python reference).",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
