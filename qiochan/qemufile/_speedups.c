/*
 * qiochan.qemufile._speedups: the fast paths of QEMUFile in C.
 *
 * QEMUFileCore holds the state every QEMUFile operation shares (the 32 KiB
 * buffer, the read/write positions and the iovec queue) and implements the
 * operations a migration stream calls once per value or per page:
 *
 *     put_byte put_be16 put_be32 put_be64 put_buffer put_buffer_async
 *     get_byte get_be16 get_be32 get_be64 get_buffer_in_place
 *
 * Each one handles the common case only: the data fits in the buffer, the
 * value is an int in range, the file is open and error-free.  Everything else
 * (full buffer, flush, error latch, closed file, bad input, coalescing, may_free)
 * is handed to the Python slow path of the same operation, so the semantics
 * live in one place: qiochan/qemufile/_*.py.  qiochan/qemufile/_core.py is the
 * pure-Python twin of this file, used when the extension is not built, and the
 * test suite runs every QEMUFile test against both.
 *
 * Memory safety never depends on the Python side: positions written from
 * Python are checked against the buffer's fixed size before every access, and
 * the buffer is exported for the object's lifetime so it cannot be resized.
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
/* Most views written in one direct_write: a full queue plus the open segment, with room. */
#define DIRECT_MAX_VIEWS (2 * MAX_IOV_LIMIT)
#if defined(IOV_MAX) && IOV_MAX < DIRECT_MAX_VIEWS + 1
#error "direct_write needs IOV_MAX >= DIRECT_MAX_VIEWS + 1"
#endif

static Py_ssize_t max_iov_size = MAX_IOV_LIMIT;

/* Interned method names and width constants, made once at import. */
static PyObject *str_put_value, *str_put_buffer_slow, *str_put_buffer_async_slow;
static PyObject *str_get_value, *str_get_in_place_slow, *str_flush, *str_read_into;
static PyObject *str_ioc, *str_io_write_fd;
static PyObject *width_obj[9];

typedef struct {
    PyObject_HEAD
    Py_ssize_t index;     /* write position (writer) or read position (reader) */
    Py_ssize_t size;      /* end of the buffered input (reader) */
    Py_ssize_t seg;       /* start of the writer's open buffer segment */
    Py_ssize_t fast_end;  /* writers take the fast path while index + n < fast_end */
    Py_ssize_t iov_bytes; /* bytes in the queued iovecs */
    Py_ssize_t total;     /* bytes written to (or read from) the channel */
    char reading;         /* an open input stream: the fast paths may refill */
    PyObject *buf;        /* bytearray of IO_BUF_SIZE bytes */
    PyObject *view;       /* memoryview(buf) */
    PyObject *iov;        /* list of memoryviews queued for the next flush */
    PyObject *free_list;  /* indices in iov of may_free buffers */
    Py_buffer export;     /* held for the object's lifetime: buf cannot be resized */
    unsigned char *data;  /* export.buf */
    int nspare;           /* recycled segment views in spare (see recycle_segments) */
    PyObject *spare[MAX_IOV_LIMIT];
} Core;

/* -- helpers ------------------------------------------------------------------ */

static PyObject *
call_slow1(Core *self, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {(PyObject *)self, arg};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *
call_slow2(Core *self, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {(PyObject *)self, a, b};
    return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* True when n bytes can be written at index on the fast path. */
static inline int
write_fits(Core *self, Py_ssize_t n)
{
    Py_ssize_t i = self->index, end = self->fast_end;
    return i >= 0 && i < end && end <= IO_BUF_SIZE && n < end - i;
}

/* True when n bytes can be read at index on the fast path. */
static inline int
read_fits(Core *self, Py_ssize_t n)
{
    Py_ssize_t i = self->index, size = self->size;
    return i >= 0 && i <= size && size <= IO_BUF_SIZE && n <= size - i;
}

/* -- segment views ------------------------------------------------------------------- */

/*
 * Each page put_buffer_async queues is preceded by a view of the buffer
 * segment before it (the page header): one new memoryview per page, which
 * costs as much as the rest of the call.  A successful flush therefore keeps
 * the segment views of the queue it drops when nothing else can see them,
 * and segment_view points a kept one at the new segment instead of slicing.
 */

/*
 * True when item is a one-dimensional byte slice of this file's buffer that
 * only its single reference holder sees: no other reference, no exports, no
 * weak references, not released.  Such a view is writable (a bytearray's), so
 * memoryview never cached a hash for it.
 */
static int
reusable(Core *self, PyObject *item)
{
    if (!Py_IS_TYPE(item, &PyMemoryView_Type) || Py_REFCNT(item) != 1) {
        return 0;
    }
    PyMemoryViewObject *view = (PyMemoryViewObject *)item;
    return view->mbuf == ((PyMemoryViewObject *)self->view)->mbuf && view->exports == 0
        && view->weakreflist == NULL && !(view->flags & _Py_MEMORYVIEW_RELEASED)
        && view->view.ndim == 1 && view->view.itemsize == 1 && view->view.strides[0] == 1
        && !view->view.readonly && view->view.suboffsets == NULL;
}

/* A view of data[seg:i] (0 <= seg < i <= IO_BUF_SIZE), or NULL with an exception. */
static PyObject *
segment_view(Core *self, Py_ssize_t seg, Py_ssize_t i)
{
    while (self->nspare > 0) {
        PyObject *view = self->spare[--self->nspare];
        if (!reusable(self, view)) {
            Py_DECREF(view); /* reached through gc.get_objects() meanwhile: not ours alone */
            continue;
        }
        Py_buffer *b = PyMemoryView_GET_BUFFER(view);
        b->buf = self->data + seg;
        b->len = i - seg;
        b->shape[0] = i - seg;
        return view;
    }
    return PySequence_GetSlice(self->view, seg, i);
}

/* Keep the reusable views of queue, a list about to be freed that nothing else holds. */
static void
recycle_segments(Core *self, PyObject *queue)
{
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(queue) && self->nspare < MAX_IOV_LIMIT; k++) {
        PyObject *item = PyList_GET_ITEM(queue, k);
        if (reusable(self, item)) {
            Py_INCREF(item);
            self->spare[self->nspare++] = item;
        }
    }
}

/* -- direct writes ------------------------------------------------------------------ */

/*
 * Pin the memoryview item for a write without the GIL, as PyObject_GetBuffer
 * would (a strong reference, and an export that makes release() refuse), and
 * return its buffer; NULL (no exception) when it is not a live C-contiguous
 * memoryview.
 */
static Py_buffer *
pin_view(PyObject *item)
{
    if (!PyMemoryView_Check(item)) {
        return NULL;
    }
    PyMemoryViewObject *view = (PyMemoryViewObject *)item;
    if ((view->flags & _Py_MEMORYVIEW_RELEASED) || !(view->flags & _Py_MEMORYVIEW_C)) {
        return NULL;
    }
    Py_INCREF(item);
    view->exports++;
    return &view->view;
}

static void
unpin_view(PyObject *item)
{
    ((PyMemoryViewObject *)item)->exports--;
    Py_DECREF(item);
}

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
 * Write the memoryviews of the list iov, then tail_len bytes at tail (memory
 * the caller keeps alive), to fd with one system call, the GIL released:
 * sendmsg(2) with MSG_NOSIGNAL, or writev(2) when fd is not a socket
 * (ENOTSOCK), as the socket and file channels' io_writev do.  A short write
 * (a signal, a full non-blocking socket), EINTR, EAGAIN or an error is left to
 * the caller's normal path (writev_all), which continues, retries after
 * running signal handlers, waits or raises exactly as the channel does.
 * Anything unusual (an item that is not a live contiguous memoryview, more
 * than DIRECT_MAX_VIEWS items) writes nothing.
 *
 * Every view is pinned (pin_view) while the GIL is released, so no other
 * thread can release or free what the kernel is reading.
 *
 * Returns the bytes written (0 when nothing was); never fails.
 */
static Py_ssize_t
direct_write(int fd, PyObject *iov, const unsigned char *tail, Py_ssize_t tail_len)
{
    PyObject *pinned[DIRECT_MAX_VIEWS];
    struct iovec vec[DIRECT_MAX_VIEWS + 1];
    Py_ssize_t taken = 0, count = PyList_GET_SIZE(iov);
    ssize_t r = 0;

    if (count > DIRECT_MAX_VIEWS) {
        return 0;
    }
    for (; taken < count; taken++) {
        /* pinning runs no Python code: the list stays put */
        PyObject *item = PyList_GET_ITEM(iov, taken);
        Py_buffer *b = pin_view(item);
        if (b == NULL) {
            goto release; /* released, strided...: the normal path raises the error */
        }
        pinned[taken] = item;
        vec[taken].iov_base = b->buf;
        vec[taken].iov_len = (size_t)b->len;
    }
    if (tail_len > 0) {
        vec[count].iov_base = (void *)tail;
        vec[count++].iov_len = (size_t)tail_len;
    }
    Py_BEGIN_ALLOW_THREADS
    struct msghdr msg = {.msg_iov = vec, .msg_iovlen = (size_t)count};
    r = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (r < 0 && errno == ENOTSOCK) {
        r = writev(fd, vec, (int)count);
    }
    Py_END_ALLOW_THREADS
release:
    for (Py_ssize_t k = 0; k < taken; k++) {
        unpin_view(pinned[k]);
    }
    return r > 0 ? (Py_ssize_t)r : 0;
}

/* write_direct(ioc, iov): see the docstring in speedups_functions. */
static PyObject *
speedups_write_direct(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "write_direct(ioc, iov) takes a channel and a list");
        return NULL;
    }
    PyObject *fdobj = PyObject_CallMethodNoArgs(args[0], str_io_write_fd);
    if (fdobj == NULL) {
        return NULL;
    }
    int fd = as_write_fd(fdobj);
    Py_DECREF(fdobj); /* an int: frees nothing that runs code */
    if (fd < 0) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromSsize_t(direct_write(fd, args[1], NULL, 0));
}

/*
 * The flush the fast paths trigger (a full buffer or iovec queue): the common
 * case of the Python _flush, in C.  When the channel has an io_write_fd and
 * the queue holds no may_free pages, the queue and the open segment are
 * written with direct_write; if everything went out, the state is reset as
 * _flush resets it.  Anything else calls the Python _flush: _flush() when no
 * direct write was tried (no fd, may_free pages), _flush(written) after a short
 * one (a signal, an error, EAGAIN), which writes the rest through writev_all,
 * waits and latches errors: the semantics stay in Python.
 *
 * io_write_fd() is asked last, so that no Python code (a finalizer run by an
 * allocation, another thread) can close the channel between the answer and
 * the write.  If another thread changed the state during the write (using
 * one QEMUFile from two threads at once is not supported), it is left as that
 * thread left it: a closed or failed file is never reopened.
 */
static int
core_flush(Core *self)
{
    PyObject *result = NULL, *fresh, *ioc, *fdobj;
    Py_ssize_t done = -1; /* -1: no direct write was attempted */

    fresh = PyList_New(0); /* allocations first: a collection may run Python code */
    if (fresh == NULL) {
        return -1;
    }
    ioc = PyObject_GetAttr((PyObject *)self, str_ioc);
    if (ioc == NULL) {
        Py_DECREF(fresh);
        return -1;
    }
    fdobj = PyObject_CallMethodNoArgs(ioc, str_io_write_fd);
    if (fdobj == NULL) {
        goto done;
    }
    int fd = as_write_fd(fdobj);
    Py_DECREF(fdobj); /* an int: frees nothing that runs code */
    PyObject *iov = self->iov, *free_list = self->free_list;
    Py_ssize_t i = self->index, seg = self->seg, queued = self->iov_bytes;
    Py_ssize_t fast_end = self->fast_end, total = self->total;
    if (fd >= 0 && fast_end > 0 && !self->reading && iov != NULL && PyList_CheckExact(iov)
        && free_list != NULL && PyList_CheckExact(free_list) && PyList_GET_SIZE(free_list) == 0
        && seg >= 0 && seg <= i && i <= IO_BUF_SIZE && queued >= 0
        && queued <= PY_SSIZE_T_MAX - IO_BUF_SIZE && total >= 0
        && total <= PY_SSIZE_T_MAX - (queued + IO_BUF_SIZE)) {
        Py_ssize_t pending = queued + (i - seg), count = PyList_GET_SIZE(iov);
        Py_INCREF(iov);
        done = direct_write(fd, iov, self->data + seg, i - seg);
        if (done == pending) {
            if (self->iov == iov && PyList_GET_SIZE(iov) == count && self->index == i
                && self->seg == seg && self->iov_bytes == queued && self->fast_end == fast_end
                && self->total == total && self->free_list == free_list
                && PyList_GET_SIZE(free_list) == 0) {
                /* everything went out: reset as _flush does, then drop the old queue */
                self->total = total + pending;
                self->iov_bytes = 0;
                self->index = self->seg = 0;
                self->fast_end = IO_BUF_SIZE;
                self->iov = fresh;
                fresh = NULL;
                if (Py_REFCNT(iov) == 2) {
                    recycle_segments(self, iov); /* only we hold the queue now */
                }
                Py_DECREF(iov); /* the reference self->iov had */
            }
            Py_DECREF(iov);
            result = Py_NewRef(Py_None);
            goto done;
        }
        Py_DECREF(iov);
    }
    /* _flush(None): nothing was tried; _flush(done): a direct write stopped short */
    PyObject *written = done < 0 ? Py_NewRef(Py_None) : PyLong_FromSsize_t(done);
    if (written != NULL) {
        result = call_slow1(self, str_flush, written);
        Py_DECREF(written);
    }
done:
    Py_XDECREF(fresh);
    Py_DECREF(ioc);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* -- writers ---------------------------------------------------------------------- */

static PyObject *
put_value(Core *self, PyObject *v, int width)
{
    if (PyLong_Check(v) && write_fits(self, width)) {
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or too large: the slow path raises the error */
        }
        else if (width == 8 || (x >> (8 * width)) == 0) {
            unsigned char *p = self->data + self->index;
            for (int k = width - 1; k >= 0; k--) {
                p[k] = (unsigned char)(x & 0xff);
                x >>= 8;
            }
            self->index += width;
            Py_RETURN_NONE;
        }
    }
    return call_slow2(self, str_put_value, width_obj[width], v);
}

/* One METH_O entry point per width: put_byte, put_be16, put_be32, put_be64. */
#define VALUE_WRITER(name, width) \
    static PyObject *Core_##name(Core *self, PyObject *v) { return put_value(self, v, width); }
VALUE_WRITER(put_byte, 1)
VALUE_WRITER(put_be16, 2)
VALUE_WRITER(put_be32, 4)
VALUE_WRITER(put_be64, 8)

/*
 * Copy src through the buffer, flushing each time the buffer fills, as the
 * slow path's _put_view does.  Only called with fast_end == IO_BUF_SIZE: the
 * file is healthy, and the open segment either exists or has an iovec to
 * spare, so only a full buffer triggers a flush.  Stops early (dropping the
 * rest, as QEMU does) when a flush latches an error.
 */
static int
put_through(Core *self, const char *src, Py_ssize_t n)
{
    while (n > 0) {
        Py_ssize_t i = self->index;
        if (self->fast_end != IO_BUF_SIZE || i < 0 || i > IO_BUF_SIZE) {
            return 0; /* an error was latched by a flush */
        }
        Py_ssize_t chunk = IO_BUF_SIZE - i < n ? IO_BUF_SIZE - i : n;
        memmove(self->data + i, src, (size_t)chunk);
        self->index = i + chunk;
        src += chunk;
        n -= chunk;
        if (self->index == IO_BUF_SIZE && core_flush(self) < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
Core_put_buffer(Core *self, PyObject *buf)
{
    if (self->fast_end > 0) {
        Py_buffer src;
        if (PyObject_GetBuffer(buf, &src, PyBUF_SIMPLE) == 0) {
            int done = 1, rc = 0;
            if (write_fits(self, src.len)) {
                /* memmove: buf may be a view of our own buffer */
                memmove(self->data + self->index, src.buf, (size_t)src.len);
                self->index += src.len;
            }
            else if (self->fast_end == IO_BUF_SIZE) {
                rc = put_through(self, src.buf, src.len);
            }
            else {
                done = 0;
            }
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
    return call_slow1(self, str_put_buffer_slow, buf);
}

/* A memoryview of one C-contiguous dimension of unsigned bytes, or NULL. */
static PyObject *
as_byte_view(PyObject *buf)
{
    if (Py_IS_TYPE(buf, &PyMemoryView_Type)) {
        Py_buffer *b = PyMemoryView_GET_BUFFER(buf);
        int flags = ((PyMemoryViewObject *)buf)->flags;
        if (flags & _Py_MEMORYVIEW_RELEASED) {
            return NULL; /* the slow path raises the ValueError */
        }
        /* exactly memoryview.c_contiguous (an empty strided view is not) */
        if (b->ndim == 1 && (b->format == NULL || strcmp(b->format, "B") == 0)
            && (flags & _Py_MEMORYVIEW_C)) {
            Py_INCREF(buf);
            return buf;
        }
        return NULL;
    }
    if (PyBytes_CheckExact(buf) || PyByteArray_CheckExact(buf)) {
        return PyMemoryView_FromObject(buf);
    }
    return NULL;
}

/*
 * Append segment (if any) then view to iov, all or nothing.  Nothing here can
 * run Python code: PyList_Append never triggers a garbage collection.
 */
static int
queue_views(PyObject *iov, PyObject *segment, PyObject *view)
{
    if (segment != NULL && PyList_Append(iov, segment) < 0) {
        return -1;
    }
    if (PyList_Append(iov, view) < 0) {
        if (segment != NULL) {
            Py_ssize_t count = PyList_GET_SIZE(iov);
            (void)PyList_SetSlice(iov, count - 1, count, NULL); /* shrinking cannot fail */
        }
        return -1;
    }
    return 0;
}

static PyObject *
Core_put_buffer_async(Core *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *view = NULL, *segment = NULL, *iov;
    Py_ssize_t n, i, seg, count;
    int rc;

    /* The fast path: one positional zero-copy buffer, nothing unusual. */
    if (nargs != 1 || kwnames != NULL || self->fast_end <= 0) {
        goto slow;
    }
    /*
     * Allocate first, look at the state after: an allocation may run a garbage
     * collection, and with it Python code (__del__, weakref callbacks) that
     * changes this file's state.
     */
    view = as_byte_view(args[0]);
    if (view == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto slow;
    }
    n = PyMemoryView_GET_BUFFER(view)->len;
    if (n == 0) {
        Py_DECREF(view);
        Py_RETURN_NONE;
    }
    i = self->index;
    seg = self->seg;
    if (seg >= 0 && seg < i && i <= IO_BUF_SIZE) {
        /* the open buffer segment is closed: it goes before the caller's buffer */
        segment = segment_view(self, seg, i);
        if (segment == NULL) {
            Py_DECREF(view);
            return NULL;
        }
    }
    /* From here on nothing allocates until the views are queued. */
    iov = self->iov;
    if (self->fast_end <= 0 || self->index != i || self->seg != seg || seg < 0 || i < seg
        || i > IO_BUF_SIZE || iov == NULL || !PyList_CheckExact(iov)) {
        goto slow_release;
    }
    count = PyList_GET_SIZE(iov);
    if (segment == NULL && count > 0) {
        PyObject *last = PyList_GET_ITEM(iov, count - 1);
        if (PyMemoryView_Check(last)
            && PyMemoryView_GET_BUFFER(last)->obj == PyMemoryView_GET_BUFFER(view)->obj) {
            goto slow_release; /* same exporter: maybe adjacent, the slow path coalesces */
        }
    }
    Py_INCREF(iov);
    rc = queue_views(iov, segment, view);
    Py_XDECREF(segment);
    Py_DECREF(view);
    if (rc < 0) {
        Py_DECREF(iov);
        return NULL;
    }
    self->iov_bytes = (Py_ssize_t)((size_t)self->iov_bytes + (size_t)(i - seg + n));
    self->seg = i;
    count = PyList_GET_SIZE(iov);
    Py_DECREF(iov);
    if (count >= max_iov_size - 1) {
        if (count >= max_iov_size) {
            if (core_flush(self) < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        self->fast_end = 0;
    }
    Py_RETURN_NONE;

slow_release:
    Py_XDECREF(segment);
    Py_DECREF(view);
slow:;
    PyObject *stack[3] = {(PyObject *)self, NULL, NULL};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "put_buffer_async() takes at most 2 arguments");
        return NULL;
    }
    if (nargs + nkw == 0) {
        PyErr_SetString(PyExc_TypeError, "put_buffer_async() missing required argument 'buf'");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nargs + nkw; k++) {
        stack[k + 1] = args[k];
    }
    return PyObject_VectorcallMethod(
        str_put_buffer_async_slow, stack, (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
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
    while (!read_fits(self, need)) {
        Py_ssize_t i = self->index, size = self->size;
        if (i < 0 || i > size || size > IO_BUF_SIZE) {
            return 0;
        }
        Py_ssize_t pending = size - i;
        if (i > 0) {
            memmove(self->data, self->data + i, (size_t)pending);
            self->index = 0;
            self->size = pending;
        }
        PyObject *target = PySequence_GetSlice(self->view, pending, IO_BUF_SIZE);
        if (target == NULL) {
            return -1;
        }
        PyObject *r = call_slow1(self, str_read_into, target);
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

static PyObject *
get_value(Core *self, int width)
{
    int rc = read_fits(self, width) ? 1 : refill(self, width);
    if (rc < 0) {
        return NULL;
    }
    if (rc) {
        const unsigned char *p = self->data + self->index;
        unsigned long long x = 0;
        for (int k = 0; k < width; k++) {
            x = (x << 8) | p[k];
        }
        self->index += width;
        return PyLong_FromUnsignedLongLong(x);
    }
    return call_slow1(self, str_get_value, width_obj[width]);
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
            int rc = read_fits(self, n) ? 1 : (n < IO_BUF_SIZE ? refill(self, n) : 0);
            if (rc < 0) {
                return NULL;
            }
            if (rc == 0) {
                return call_slow1(self, str_get_in_place_slow, arg);
            }
            Py_ssize_t i = self->index;
            PyObject *result = PySequence_GetSlice(self->view, i, i + n);
            if (result != NULL) {
                self->index = i + n;
            }
            return result;
        }
    }
    return call_slow1(self, str_get_in_place_slow, arg);
}

/* -- the type -------------------------------------------------------------------------- */

static PyObject *
Core_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->buf = PyByteArray_FromStringAndSize(NULL, IO_BUF_SIZE);
    if (self->buf == NULL) {
        goto fail;
    }
    memset(PyByteArray_AS_STRING(self->buf), 0, IO_BUF_SIZE);
    if (PyObject_GetBuffer(self->buf, &self->export, PyBUF_WRITABLE) < 0) {
        goto fail;
    }
    self->data = self->export.buf;
    self->view = PyMemoryView_FromObject(self->buf);
    self->iov = PyList_New(0);
    self->free_list = PyList_New(0);
    if (self->view == NULL || self->iov == NULL || self->free_list == NULL) {
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
    Py_VISIT(self->iov);
    Py_VISIT(self->free_list);
    for (int k = 0; k < self->nspare; k++) {
        Py_VISIT(self->spare[k]);
    }
    return 0;
}

static int
Core_clear(Core *self)
{
    Py_CLEAR(self->iov);
    Py_CLEAR(self->free_list);
    while (self->nspare > 0) {
        self->nspare--; /* not inside Py_CLEAR: it evaluates its argument twice */
        Py_CLEAR(self->spare[self->nspare]);
    }
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
               "The caller must keep ``buf`` unchanged until the next flush.  Adjacent\n"
               "buffers of one exporter share an iovec; with ``may_free``, whole pages\n"
               "of an ``mmap``-backed ``buf`` are released after the flush.\n\n"
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
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Core_members[] = {
    {"_index", T_PYSSIZET, offsetof(Core, index), 0, NULL},
    {"_size", T_PYSSIZET, offsetof(Core, size), 0, NULL},
    {"_seg", T_PYSSIZET, offsetof(Core, seg), 0, NULL},
    {"_fast_end", T_PYSSIZET, offsetof(Core, fast_end), 0, NULL},
    {"_iov_bytes", T_PYSSIZET, offsetof(Core, iov_bytes), 0, NULL},
    {"_total", T_PYSSIZET, offsetof(Core, total), 0, NULL},
    {"_reading", T_BOOL, offsetof(Core, reading), 0, NULL},
    {"_buf", T_OBJECT, offsetof(Core, buf), READONLY, NULL},
    {"_view", T_OBJECT, offsetof(Core, view), READONLY, NULL},
    {"_iov", T_OBJECT_EX, offsetof(Core, iov), 0, NULL},
    {"_free", T_OBJECT_EX, offsetof(Core, free_list), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Core_slots[] = {
    {Py_tp_doc, PyDoc_STR("The state and fast paths of a QEMUFile (C implementation).")},
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

static PyMethodDef speedups_functions[] = {
    {"write_direct", (PyCFunction)(void (*)(void))speedups_write_direct, METH_FASTCALL,
     PyDoc_STR("write_direct($module, ioc, iov, /)\n--\n\n"
               "Write the memoryviews of the list iov with one system call on the fd\n"
               "ioc.io_write_fd() returns, without the GIL; return the bytes written (0\n"
               "after an error, EINTR or EAGAIN), or -1 when the channel offers no fd.")},
    {NULL, NULL, 0, NULL},
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
        {&str_put_buffer_async_slow, "_put_buffer_async_slow"},
        {&str_get_value, "_get_value"},
        {&str_get_in_place_slow, "_get_in_place_slow"},
        {&str_flush, "_flush"},
        {&str_read_into, "_read_into"},
        {&str_ioc, "_ioc"},
        {&str_io_write_fd, "io_write_fd"},
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
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qiochan.qemufile._speedups",
    .m_doc = "C fast paths of QEMUFile (see qiochan/qemufile/_core.py for the Python twin).",
    .m_size = 0,
    .m_methods = speedups_functions,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
