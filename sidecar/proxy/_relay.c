/*
 * The sidecar's native relay: the hot messages of a session, relayed in C.
 *
 * It decides nothing and never reads SQL. It relays a buffer only when every
 * message in it is one whose verdict the Python Session already holds:
 *
 *   client:   a simple Query alone in its buffer, with nothing pending, when the
 *             Session's quick_query (the engine's verdict, in Python) says its
 *             bytes go upstream as they are (the relay times that call, into the
 *             decision-latency Histogram defined here);
 *             Bind of a prepared statement whose verdict is plain and was
 *             given under the current policy generation and session state,
 *             Execute of a portal so bound, Sync, and Describe and Flush, which
 *             the Session forwards as they are (libpq sends Bind, Describe,
 *             Execute, Sync for every run of a prepared statement);
 *   upstream: ParseComplete, BindComplete, ParameterDescription,
 *             RowDescription, NoData, DataRow, CommandComplete and
 *             ReadyForQuery, while the Session waits for nothing else.
 *
 * Anything else in the buffer, a message cut short, or a Session in any other
 * state (holding, probing, re-preparing, discarding after an error...) and the
 * buffer goes, untouched, to the Python Session's
 * own client_data/upstream_data. So the relay works in two passes: the first
 * only reads and checks, the second applies exactly what the Python code would
 * have done for those messages (the same dict and deque updates, the same
 * _finish calls for the audit trail) and writes the buffer on unchanged.
 *
 * A statement's event goes straight into the audit spool's buffer (SpoolLines, which
 * the spool keeps its unwritten lines in when this module is built).
 *
 * Built by sidecar/proxy/build_relay.py; optional (the sidecar runs without it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#ifndef MSG_NOSIGNAL /* not Linux: Python ignores SIGPIPE anyway */
#define MSG_NOSIGNAL 0
#endif

#define MAX_MESSAGES 256 /* per buffer; more and Python relays it */
#define SMALL_MESSAGE_LIMIT 10000 /* messages.SMALL_MESSAGE_LIMIT */
#define LARGE_STATEMENT (64 * 1024) /* session.LARGE_STATEMENT: larger is Python's */

/* Interned attribute names, and what configure() hands over. */
static PyObject *s_generation, *s_state, *s_verdict, *s_plain, *s_barrier,
    *s_write, *s_client_data, *s_upstream_data, *s_error, *s_finish, *s_append, *s_popleft,
    *s_allowed, *s_exec, *s_session_write, *s_append_line, *s_resolved, *s_approval_id,
    *s_audit_fragment, *s_action, *s_recorded, *s_quick_query, *s_get_write_buffer_size,
    *s_is_closing, *s_observe, *s_accepting, *s_flush;
static PyObject *SYNC = NULL;  /* session._SYNC */
static PyObject *STAMP = NULL; /* audit_event._STAMP: the schema version member */
static PyObject *ONE = NULL;
/* proxy.policy.Verdict (configure()), a NamedTuple, and the indices of the fields the
 * relay reads: an item by index costs a load where the attribute costs a lookup. */
static PyTypeObject *VERDICT = NULL;
static Py_ssize_t i_action = -1, i_upstream_sql = -1, i_audit_fragment = -1, i_approval_id = -1,
                  i_plain = -1, i_barrier = -1;
static PyObject *status_bytes[256];
/* Buffers relayed here, each way (stats()): what the tests check was not all Python's. */
static unsigned long long relayed_client = 0, relayed_upstream = 0;
/* Writes the relay sent to a socket itself, past the transport (send_to). */
static unsigned long long sent_direct = 0;
/* Simple Queries given the verdict of a shape the session kept (shape_verdict). */
static unsigned long long by_shape = 0;

static inline int32_t
be32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* verdict.name, a new reference: its item at index when it is a Verdict, else the
 * attribute (NULL with an error when it has none). */
static inline PyObject *
verdict_get(PyObject *verdict, PyObject *name, Py_ssize_t index)
{
    if (Py_TYPE(verdict) == VERDICT && index >= 0 && index < PyTuple_GET_SIZE(verdict))
        return Py_NewRef(PyTuple_GET_ITEM(verdict, index));
    return PyObject_GetAttr(verdict, name);
}

/* 1 if obj.name is true, 0 if false, -1 on error. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static PyObject *
fallback(PyObject *session, PyObject *method, PyObject *data)
{
    PyObject *r = PyObject_CallMethodOneArg(session, method, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* The end of the NUL-terminated string at p (exclusive of the NUL), or NULL. */
static const unsigned char *
cstring_end(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *z = memchr(p, 0, (size_t)(end - p));
    return z;
}

/* ---- the session's state, in native fields --------------------------------------- */

/* The base class of the Python Session when this module is built: the attributes the
 * relay reads on every message live here, so reading one is a load, not a lookup by
 * name. To Python they are ordinary attributes (member descriptors); the Session
 * sets each in __init__ as before. Each field, and its attribute's name in Python: */
#define CORE_FIELDS(X) \
    X(hold, "hold") \
    X(cbuf, "cbuf") \
    X(discarding, "_discarding") \
    X(dirty, "dirty") \
    X(strict, "_strict") \
    X(statements, "statements") \
    X(portals, "portals") \
    X(pending, "pending") \
    X(policy, "policy") \
    X(state, "state") \
    X(upstream, "upstream") \
    X(client, "client") \
    X(ubuf, "ubuf") \
    X(uskip, "uskip") \
    X(probing, "_probing") \
    X(reparsing, "_reparsing") \
    X(sql_prepared, "_sql_prepared") \
    X(cursors, "_cursors") \
    X(status, "status") \
    X(refusals, "_refusals") \
    X(max_message, "max_message") \
    X(audit, "audit") \
    X(base_json, "_base_json") \
    X(metrics, "metrics") \
    X(client_fd, "_client_fd") \
    X(upstream_fd, "_upstream_fd") \
    X(shapes, "_shapes") \
    X(decisions, "_decisions") \
    X(spool_lines, "_spool_lines") \
    X(recorded, "_recorded")

typedef struct {
    PyObject_HEAD
#define FIELD(f, name) PyObject *f;
    CORE_FIELDS(FIELD)
#undef FIELD
} SessionCore;

static PyMemberDef core_members[] = {
#define MEMBER(f, name) {name, T_OBJECT_EX, offsetof(SessionCore, f), 0, NULL},
    CORE_FIELDS(MEMBER)
#undef MEMBER
    {NULL},
};

static int
core_traverse(SessionCore *self, visitproc visit, void *arg)
{
#define VISIT(f, name) Py_VISIT(self->f);
    CORE_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
core_clear(SessionCore *self)
{
#define CLEAR(f, name) Py_CLEAR(self->f);
    CORE_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
core_dealloc(SessionCore *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    core_clear(self);
    type->tp_free((PyObject *)self);
}

static PyTypeObject SessionCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.proxy._relay.SessionCore",
    .tp_doc = "The relay's part of a Session's state (native fields).",
    .tp_basicsize = sizeof(SessionCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_members = core_members,
};

/* A new reference to a field, or AttributeError naming it when it was never set. */
static PyObject *
core_ref(PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "%s is not set", name);
        return NULL;
    }
    return Py_NewRef(value);
}

#define CORE(session) ((SessionCore *)(session))
#define GET(session, field) core_ref(CORE(session)->field, #field)
#define SET(session, field, value) core_set(&CORE(session)->field, (value))

static inline int
core_set(PyObject **slot, PyObject *value)
{
    Py_XSETREF(*slot, Py_NewRef(value));
    return 0;
}

/* Of a new reference (consumed): 1 if true, 0 if false, -1 if NULL or on error. */
static int
true_ref(PyObject *v)
{
    if (v == NULL)
        return -1;
    int r = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* Of a new reference (consumed): 1 if None, 0 if not, -1 if NULL. */
static int
none_ref(PyObject *v)
{
    if (v == NULL)
        return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

static int
is_session(PyObject *session)
{
    if (PyObject_TypeCheck(session, &SessionCoreType))
        return 1;
    PyErr_SetString(PyExc_TypeError, "the relay needs a Session (a SessionCore)");
    return 0;
}

/* ---- a statement awaiting its outcome ------------------------------------------- */

/* session._Exec when this module is built: an Execute (or simple Query) whose outcome
 * the audit trail is waiting for. The same attributes as the Python class it
 * replaces, in native fields, so the relay makes and reads one without a call or a
 * lookup by name. */
typedef struct {
    PyObject_HEAD
    PyObject *verdict;  /* Verdict or None (refused) */
    PyObject *is_query; /* bool: a simple Query (its reply ends at ReadyForQuery) */
    PyObject *event;    /* strict durability: the id its intent was journaled under */
    PyObject *journal;  /* strict durability: the journal file holding it (int, 0: none) */
    PyObject *base;     /* the session's event fields as decided, or "" for the current */
    PyObject *rows;     /* int or None */
    PyObject *error;    /* str or None */
    PyObject *started;  /* time.perf_counter_ns() when it was sent */
} ExecObject;

static PyObject *EMPTY = NULL; /* "" */

#define EXEC_FIELDS(X) X(verdict) X(is_query) X(event) X(journal) X(base) X(rows) X(error) X(started)

static PyMemberDef exec_members[] = {
#define MEMBER(f) {#f, T_OBJECT_EX, offsetof(ExecObject, f), 0, NULL},
    EXEC_FIELDS(MEMBER)
#undef MEMBER
    {NULL},
};

/* PyLong_AsLongLong, through PyLong_AsLong where that is as wide: CPython 3.11's
 * PyLong_AsLongLong converts any value past 2**30 (a perf_counter_ns reading) byte by
 * byte, at four times the instructions. Same result, same OverflowError. */
static inline long long
as_long_long(PyObject *v)
{
#if LONG_MAX == LLONG_MAX
    return PyLong_AsLong(v);
#else
    return PyLong_AsLongLong(v);
#endif
}

static long long
monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* time.perf_counter_ns's clock */
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* What __init__ sets: the one place an Exec's fields get their first values. */
static int
exec_fill(ExecObject *self, PyObject *verdict, PyObject *is_query, PyObject *base)
{
    PyObject *started = PyLong_FromLongLong(monotonic_ns());
    if (started == NULL)
        return -1;
    Py_XSETREF(self->verdict, Py_NewRef(verdict));
    Py_XSETREF(self->is_query, Py_NewRef(is_query));
    Py_XSETREF(self->event, Py_NewRef(Py_None));
    Py_XSETREF(self->journal, PyLong_FromLong(0));
    Py_XSETREF(self->base, Py_NewRef(base));
    Py_XSETREF(self->rows, Py_NewRef(Py_None));
    Py_XSETREF(self->error, Py_NewRef(Py_None));
    Py_XSETREF(self->started, started);
    return self->journal == NULL ? -1 : 0;
}

static int
exec_init(ExecObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"verdict", "is_query", "base", NULL};
    PyObject *verdict, *is_query, *base = EMPTY;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:_Exec", names, &verdict, &is_query,
                                     &base))
        return -1;
    return exec_fill(self, verdict, is_query, base);
}

static int
exec_traverse(ExecObject *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    EXEC_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
exec_clear(ExecObject *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    EXEC_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
exec_dealloc(ExecObject *self)
{
    PyObject_GC_UnTrack(self);
    exec_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ExecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.proxy._relay.Exec",
    .tp_doc = "An Execute (or simple Query) whose outcome the audit trail is waiting for.",
    .tp_basicsize = sizeof(ExecObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)exec_init,
    .tp_traverse = (traverseproc)exec_traverse,
    .tp_clear = (inquiry)exec_clear,
    .tp_dealloc = (destructor)exec_dealloc,
    .tp_members = exec_members,
};

/* A new Exec, as _Exec(verdict, is_query) makes it. */
static PyObject *
exec_new(PyObject *verdict, PyObject *is_query)
{
    ExecObject *self = (ExecObject *)ExecType.tp_alloc(&ExecType, 0);
    if (self == NULL)
        return NULL;
    if (exec_fill(self, verdict, is_query, EMPTY) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* ---- the decision-latency histogram ------------------------------------------------ */

/* metrics.Histogram in C: what Metrics keeps its decision latencies in when this module
 * is built, so the relay can record a quick decision's latency without a Python call.
 * Counts per bucket (bucket i: at most bounds[i] and more than bounds[i - 1]; the last,
 * above every bound), their sum and their number. */
#define MAX_BOUNDS 32

typedef struct {
    PyObject_HEAD
    Py_ssize_t bounds_len;
    double bounds[MAX_BOUNDS];
    unsigned long long counts[MAX_BOUNDS + 1];
    double sum;
    unsigned long long count;
} HistogramObject;

static void
histogram_add(HistogramObject *self, double seconds)
{
    Py_ssize_t i = 0; /* bisect_left: the first bound at or above seconds */
    while (i < self->bounds_len && self->bounds[i] < seconds)
        i++;
    self->counts[i]++;
    self->sum += seconds;
    self->count++;
}

static int
histogram_init(HistogramObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"bounds", NULL};
    PyObject *bounds;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Histogram", names, &bounds))
        return -1;
    /* A tuple of its own: a bound's __float__ cannot change what is read next. */
    PyObject *items = PySequence_Tuple(bounds);
    if (items == NULL)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    double read[MAX_BOUNDS];
    if (n > MAX_BOUNDS) {
        Py_DECREF(items);
        PyErr_Format(PyExc_ValueError, "at most %d bounds", MAX_BOUNDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        read[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(items, i));
        if (read[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(items);
            return -1;
        }
        if (isnan(read[i]) || (i > 0 && !(read[i] > read[i - 1]))) {
            Py_DECREF(items);
            PyErr_SetString(PyExc_ValueError, "bounds must be numbers that increase");
            return -1;
        }
    }
    Py_DECREF(items);
    memcpy(self->bounds, read, sizeof(double) * (size_t)n);
    self->bounds_len = n;
    memset(self->counts, 0, sizeof(self->counts));
    self->sum = 0.0;
    self->count = 0;
    return 0;
}

static PyObject *
histogram_observe(HistogramObject *self, PyObject *seconds)
{
    double value = PyFloat_AsDouble(seconds);
    if (value == -1.0 && PyErr_Occurred())
        return NULL;
    histogram_add(self, value);
    Py_RETURN_NONE;
}

static PyObject *
histogram_snapshot(HistogramObject *self, PyObject *unused)
{
    PyObject *counts = PyTuple_New(self->bounds_len + 1);
    if (counts == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i <= self->bounds_len; i++) {
        PyObject *count = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (count == NULL) {
            Py_DECREF(counts);
            return NULL;
        }
        PyTuple_SET_ITEM(counts, i, count);
    }
    return Py_BuildValue("(NdK)", counts, self->sum, self->count);
}

static PyMethodDef histogram_methods[] = {
    {"observe", (PyCFunction)histogram_observe, METH_O, "observe(seconds): count one."},
    {"snapshot", (PyCFunction)histogram_snapshot, METH_NOARGS,
     "snapshot(): (counts per bucket, the last above every bound; sum; count)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HistogramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.proxy._relay.Histogram",
    .tp_doc = "Histogram(bounds): counts of observations by bucket, with their sum.",
    .tp_basicsize = sizeof(HistogramObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)histogram_init,
    .tp_methods = histogram_methods,
};

/* The audit spool's lines not yet written (shipper.AuditSpool.lines): events as
 * newline-ended UTF-8 in one buffer, kept between flushes. The relay writes a
 * statement event straight into it: no str, no list item, no append_line call, and
 * the flush takes one bytes object instead of joining and encoding the lines
 * (together ~2,000 instructions of a select-only transaction's ~16,000). */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size, cap;
    Py_ssize_t count;
    Py_ssize_t limit; /* lines at which a flush is due (the spool's flush_events) */
    char open;        /* the spool takes lines (set false while it is full) */
    char accepting;   /* AuditSpool.accepting, kept here: the relay reads it per Query */
} SpoolLinesObject;

#define LINES_KEPT (4 * 1024 * 1024) /* a larger buffer is freed when taken */

/* Room for n more bytes; NULL (MemoryError set) when there is none. */
static char *
lines_reserve(SpoolLinesObject *self, Py_ssize_t n)
{
    if (n > PY_SSIZE_T_MAX - self->size) {
        PyErr_NoMemory();
        return NULL;
    }
    if (self->size + n > self->cap) {
        Py_ssize_t cap = self->cap ? self->cap : 64 * 1024;
        while (cap < self->size + n)
            cap = cap > PY_SSIZE_T_MAX / 2 ? self->size + n : cap * 2;
        char *grown = PyMem_Realloc(self->data, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        self->data = grown;
        self->cap = cap;
    }
    return self->data + self->size;
}

static int
lines_init(SpoolLinesObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"limit", NULL};
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:SpoolLines", names, &limit))
        return -1;
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "limit must be at least 1");
        return -1;
    }
    self->limit = limit;
    self->open = 1;
    self->accepting = 1;
    return 0;
}

static void
lines_dealloc(SpoolLinesObject *self)
{
    PyMem_Free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lines_append(SpoolLinesObject *self, PyObject *line)
{
    if (!PyUnicode_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "append(line: str)");
        return NULL;
    }
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(line, &n);
    if (text == NULL)
        return NULL;
    char *at = lines_reserve(self, n + 1);
    if (at == NULL)
        return NULL;
    memcpy(at, text, (size_t)n);
    at[n] = '\n';
    self->size += n + 1;
    self->count++;
    return PyBool_FromLong(self->count >= self->limit);
}

static PyObject *
lines_take(SpoolLinesObject *self, PyObject *unused)
{
    PyObject *data = PyBytes_FromStringAndSize(self->data, self->size);
    if (data == NULL)
        return NULL;
    self->size = 0;
    self->count = 0;
    if (self->cap > LINES_KEPT) { /* a burst of large events: give the memory back */
        PyMem_Free(self->data);
        self->data = NULL;
        self->cap = 0;
    }
    return data;
}

static Py_ssize_t
lines_len(SpoolLinesObject *self)
{
    return self->count;
}

static PyMethodDef lines_methods[] = {
    {"append", (PyCFunction)lines_append, METH_O,
     "append(line): one event (a JSON object, no newline); True when a flush is due."},
    {"take", (PyCFunction)lines_take, METH_NOARGS,
     "take(): the lines as bytes, each ended by a newline; the buffer is then empty."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lines_members[] = {
    {"limit", T_PYSSIZET, offsetof(SpoolLinesObject, limit), 0, "lines at which a flush is due"},
    {"open", T_BOOL, offsetof(SpoolLinesObject, open), 0, "the spool takes lines"},
    {"accepting", T_BOOL, offsetof(SpoolLinesObject, accepting), 0,
     "the spool records (AuditSpool.accepting)"},
    {NULL},
};

static PySequenceMethods lines_sequence = {.sq_length = (lenfunc)lines_len};

static PyTypeObject SpoolLinesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sidecar.proxy._relay.SpoolLines",
    .tp_doc = "SpoolLines(limit): an audit spool's events not yet written, as lines.",
    .tp_basicsize = sizeof(SpoolLinesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lines_init,
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_methods = lines_methods,
    .tp_members = lines_members,
    .tp_as_sequence = &lines_sequence,
};

/* The session's spool buffer (_spool_lines, which the Session sets to its spool's
 * SpoolLines or None), borrowed; NULL when it has none: then the spool is asked by
 * name, as the Python path asks it. */
static inline SpoolLinesObject *
session_lines(PyObject *session)
{
    PyObject *lines = CORE(session)->spool_lines;
    return lines != NULL && Py_IS_TYPE(lines, &SpoolLinesType) ? (SpoolLinesObject *)lines
                                                                 : NULL;
}

/* A quick decision's latency, into session.metrics.decisions: counted here when it is
 * this module's Histogram, else through its observe(). */
static int
observe_decision(PyObject *session, long long started_ns)
{
    double seconds = (double)(monotonic_ns() - started_ns) / 1e9;
    PyObject *decisions = GET(session, decisions); /* metrics.decisions */
    if (decisions == NULL)
        return -1;
    int done = 0;
    if (Py_IS_TYPE(decisions, &HistogramType)) {
        histogram_add((HistogramObject *)decisions, seconds);
    }
    else {
        PyObject *value = PyFloat_FromDouble(seconds);
        PyObject *r = value == NULL ? NULL : PyObject_CallMethodOneArg(decisions, s_observe, value);
        Py_XDECREF(value);
        done = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_DECREF(decisions);
    return done;
}

/* The pending item for a statement the relay sends, as the Session makes it: through
 * its _exec under strict durability (which journals the intent first), else an Exec. */
static PyObject *
pending_item(PyObject *session, PyObject *verdict, PyObject *is_query, int strict)
{
    if (!strict)
        return exec_new(verdict, is_query);
    PyObject *call_args[3] = {session, verdict, is_query};
    return PyObject_VectorcallMethod(s_exec, call_args, 3, NULL);
}

#define EX(item) ((ExecObject *)(item))

/* An item the second pass takes from pending, where the first pass saw an Exec.
 * Nothing run in between (the audit spool, a Python _finish) changes pending today;
 * if something ever did, stop with an error rather than read another object as an
 * Exec. */
static int
expect_exec(PyObject *item)
{
    if (Py_TYPE(item) == &ExecType)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "the relay's pending statements changed under it");
    return 0;
}
#define XGET(item, field) core_ref(EX(item)->field, #field)

/* ---- client -> upstream ------------------------------------------------------ */

typedef struct {
    char kind;
    PyObject *portal;  /* B, E: new reference */
    PyObject *verdict; /* B, E: new reference */
} ClientStep;

static void
release_steps(ClientStep *steps, int count)
{
    for (int i = 0; i < count; i++) {
        Py_XDECREF(steps[i].portal);
        Py_XDECREF(steps[i].verdict);
    }
}

/* 1: every message is hot and the steps are filled; 0: not hot; -1: error. *plain
 * says whether the session itself is in its plain relaying state (then *max_out
 * holds its max_message), whatever the messages. */
static int
plan_client(PyObject *session, const unsigned char *buf, Py_ssize_t n, ClientStep *steps,
            int *count, int *plain, long long *max_out)
{
    int hot = 0;
    PyObject *statements = NULL, *portals = NULL, *policy = NULL, *generation = NULL,
             *state = NULL, *max_obj = NULL;
    long long max_message;
    Py_ssize_t pos = 0;
    *count = 0;

    /* The session's own state first: anything but the plain relaying state is Python's. */
    int r;
    if ((r = none_ref(GET(session, hold))) != 1)
        return r;
    PyObject *cbuf = GET(session, cbuf);
    if (cbuf == NULL)
        return -1;
    Py_ssize_t buffered = PyObject_Length(cbuf);
    Py_DECREF(cbuf);
    if (buffered != 0)
        return buffered < 0 ? -1 : 0;
    if ((r = true_ref(GET(session, discarding))) != 0)
        return r < 0 ? -1 : 0;
    if ((r = true_ref(GET(session, dirty))) != 0)
        return r < 0 ? -1 : 0;

    max_obj = GET(session, max_message);
    if (max_obj == NULL)
        goto error;
    max_message = as_long_long(max_obj);
    if (max_message == -1 && PyErr_Occurred())
        goto error;
    *plain = 1;
    *max_out = max_message;
    statements = GET(session, statements);
    portals = GET(session, portals);
    policy = GET(session, policy);
    state = GET(session, state);
    if (statements == NULL || portals == NULL || policy == NULL || state == NULL)
        goto error;
    if (!PyDict_CheckExact(statements) || !PyDict_CheckExact(portals))
        goto done;

    while (pos < n) {
        if (n - pos < 5 || *count >= MAX_MESSAGES)
            goto done; /* a message cut short, or too many: Python's */
        unsigned char kind = buf[pos];
        int32_t length = be32(buf + pos + 1);
        if (length < 4 || (long long)length > max_message ||
            ((kind == 'E' || kind == 'S' || kind == 'D' || kind == 'H') &&
             length > SMALL_MESSAGE_LIMIT))
            goto done; /* Python answers the violation */
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end > n)
            goto done;
        const unsigned char *payload = buf + pos + 5, *stop = buf + end;
        ClientStep *step = &steps[*count];
        step->kind = (char)kind;
        step->portal = NULL;
        step->verdict = NULL;
        if (kind == 'B') {
            const unsigned char *portal_end = cstring_end(payload, stop);
            if (portal_end == NULL || portal_end != payload)
                goto done; /* a named portal: Python checks the name is free */
            const unsigned char *stmt_end = cstring_end(portal_end + 1, stop);
            if (stmt_end == NULL)
                goto done;
            PyObject *stmt = PyBytes_FromStringAndSize((const char *)portal_end + 1,
                                                       stmt_end - portal_end - 1);
            if (stmt == NULL)
                goto error;
            PyObject *prepared = PyDict_GetItemWithError(statements, stmt); /* borrowed */
            Py_DECREF(stmt);
            if (prepared == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto done;
            }
            /* The policy's generation, read at the first Bind (a simple Query needs
             * none here). */
            if (generation == NULL)
                generation = PyObject_GetAttr(policy, s_generation);
            if (generation == NULL)
                goto error;
            PyObject *pgen = PyObject_GetAttr(prepared, s_generation);
            if (pgen == NULL)
                goto error;
            int same = PyObject_RichCompareBool(pgen, generation, Py_EQ);
            Py_DECREF(pgen);
            if (same != 1)
                goto maybe_error;
            PyObject *pstate = PyObject_GetAttr(prepared, s_state);
            if (pstate == NULL)
                goto error;
            Py_DECREF(pstate); /* only its identity is compared */
            if (pstate != state)
                goto done;
            PyObject *verdict = PyObject_GetAttr(prepared, s_verdict);
            if (verdict == NULL)
                goto error;
            Py_DECREF(verdict); /* the prepared statement keeps it */
            if ((r = true_ref(verdict_get(verdict, s_plain, i_plain))) != 1)
                goto maybe_error_r;
            step->portal =
                PyBytes_FromStringAndSize((const char *)payload, portal_end - payload);
            if (step->portal == NULL)
                goto error;
            step->verdict = Py_NewRef(verdict);
        }
        else if (kind == 'E') {
            const unsigned char *portal_end = cstring_end(payload, stop);
            if (portal_end == NULL)
                goto done;
            step->portal =
                PyBytes_FromStringAndSize((const char *)payload, portal_end - payload);
            if (step->portal == NULL)
                goto error;
            PyObject *verdict = NULL;
            /* A portal bound earlier in this buffer, else one the session holds. */
            for (int i = *count - 1; i >= 0 && verdict == NULL; i--) {
                if (steps[i].kind == 'B') {
                    int eq = PyObject_RichCompareBool(steps[i].portal, step->portal, Py_EQ);
                    if (eq < 0)
                        goto error_step;
                    if (eq)
                        verdict = steps[i].verdict;
                }
            }
            if (verdict == NULL) {
                verdict = PyDict_GetItemWithError(portals, step->portal);
                if (verdict == NULL) {
                    if (PyErr_Occurred())
                        goto error_step;
                    goto done_step;
                }
                if (verdict == Py_None)
                    goto done_step;
            }
            if ((r = true_ref(verdict_get(verdict, s_barrier, i_barrier))) != 0) {
                if (r < 0)
                    goto error_step;
                goto done_step;
            }
            step->verdict = Py_NewRef(verdict);
        }
        else if (kind != 'S' && kind != 'D' && kind != 'H') {
            goto done;
        }
        (*count)++;
        pos = end;
    }
    hot = 1;
    goto done;

done_step:
    Py_CLEAR(steps[*count].portal);
    goto done;
error_step:
    Py_CLEAR(steps[*count].portal);
    goto error;
maybe_error_r:
    if (r < 0)
        goto error;
    goto done;
maybe_error:
    if (PyErr_Occurred())
        goto error;
    goto done;
error:
    hot = -1;
done:
    Py_XDECREF(max_obj);
    Py_XDECREF(statements);
    Py_XDECREF(portals);
    Py_XDECREF(policy);
    Py_XDECREF(state);
    Py_XDECREF(generation);
    if (hot != 1) {
        release_steps(steps, *count);
        *count = 0;
    }
    return hot;
}

/* 1 when the transport holds nothing and is not closing, 0 when not, -1 on error. */
static int
transport_idle(PyObject *transport)
{
    PyObject *held = PyObject_CallMethodNoArgs(transport, s_get_write_buffer_size);
    if (held == NULL)
        return -1;
    Py_ssize_t size = PyLong_AsSsize_t(held);
    Py_DECREF(held);
    if (size == -1 && PyErr_Occurred())
        return -1;
    if (size != 0)
        return 0;
    PyObject *closing = PyObject_CallMethodNoArgs(transport, s_is_closing);
    if (closing == NULL)
        return -1;
    int idle = closing == Py_False;
    Py_DECREF(closing);
    return idle;
}

/* transport.write(data), or the same bytes sent to the transport's socket here.
 *
 * fd is the socket's (Session._direct_fd): >= 0 only for uvloop's plain TCP transport,
 * whose own write sends at once when it holds nothing (and its protocol is not paused,
 * when it waits for the loop's turn instead: sending earlier overtakes nothing). Sent
 * here, they skip the transport's bookkeeping (about 700 instructions) and the VFS path
 * of write(2).
 * Only while the transport holds nothing (nothing it sends later can be overtaken) and is
 * not closing (so its socket is still open and still this fd: uvloop closes the socket only
 * once the transport is closing, and the number may then be reused); what the socket does
 * not take at once, and any error, goes to transport.write as before, which buffers,
 * pauses the protocol or reports the connection lost its own way. (After write_eof a
 * transport is not closing yet but refuses writes: nothing here calls write_eof; a change
 * that does must check it here too.) */
static int
send_to(PyObject *transport, PyObject *fd_obj, PyObject *data)
{
    long fd = PyLong_Check(fd_obj) ? PyLong_AsLong(fd_obj) : -1;
    if (fd == -1 && PyErr_Occurred())
        return -1;
    PyObject *rest = NULL;
    if (fd >= 0 && PyBytes_CheckExact(data)) {
        int idle = transport_idle(transport);
        if (idle < 0)
            return -1;
        if (idle) {
            const char *buf = PyBytes_AS_STRING(data);
            Py_ssize_t len = PyBytes_GET_SIZE(data);
            ssize_t sent = send((int)fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (sent == len) {
                sent_direct++;
                return 0;
            }
            if (sent > 0 && (rest = PyBytes_FromStringAndSize(buf + sent, len - sent)) == NULL)
                return -1;
        }
    }
    PyObject *r = PyObject_CallMethodOneArg(transport, s_write, rest != NULL ? rest : data);
    Py_XDECREF(rest);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Forward data upstream as the Session's client_data would: through its _write under
 * strict audit durability (which holds the bytes until the journal is on disk). */
static int
forward_upstream(PyObject *session, PyObject *data, int strict)
{
    if (strict) {
        PyObject *r = PyObject_CallMethodOneArg(session, s_session_write, data);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    PyObject *upstream = GET(session, upstream);
    if (upstream == NULL)
        return -1;
    PyObject *fd = GET(session, upstream_fd);
    int done = fd == NULL ? -1 : send_to(upstream, fd, data);
    Py_XDECREF(fd);
    Py_DECREF(upstream);
    return done;
}

/* shape.fits_pieces on bytes: 1 when the text is of the shape whose fixed texts (a
 * tuple of bytes) and kinds of values between them (bytes: 'n' a number, 's' a
 * string) these are, else 0. */
static int
fits_pieces(const unsigned char *t, Py_ssize_t len, PyObject *fixed, PyObject *kinds)
{
    Py_ssize_t count = PyBytes_GET_SIZE(kinds), at = 0;
    const char *kind = PyBytes_AS_STRING(kinds);
    if (PyTuple_GET_SIZE(fixed) != count + 1)
        return 0;
    for (Py_ssize_t i = 0;; i++) {
        PyObject *part = PyTuple_GET_ITEM(fixed, i);
        if (!PyBytes_CheckExact(part))
            return 0;
        Py_ssize_t size = PyBytes_GET_SIZE(part);
        if (len - at < size || memcmp(t + at, PyBytes_AS_STRING(part), (size_t)size) != 0)
            return 0;
        at += size;
        if (i == count)
            break;
        if (kind[i] == 'n') { /* one to nine ASCII digits */
            Py_ssize_t end = at;
            while (end < len && end - at < 10 && t[end] >= '0' && t[end] <= '9')
                end++;
            if (end == at || end - at > 9)
                return 0;
            at = end;
        }
        else if (kind[i] == 's') { /* '...', '' for a quote, no " and no NUL */
            if (at >= len || t[at] != '\'')
                return 0;
            for (at++;; at++) {
                if (at >= len)
                    return 0;
                unsigned char c = t[at];
                if (c == '\'') {
                    if (at + 1 < len && t[at + 1] == '\'') {
                        at++;
                        continue;
                    }
                    at++;
                    break;
                }
                if (c == '"' || c == 0)
                    return 0;
            }
        }
        else {
            return 0;
        }
    }
    return at == len;
}

/* The verdict for a simple Query's text when it is of a shape whose verdict
 * Session.quick_query kept (session._shapes: the same text but for the values of its
 * simple literals, which the policy serves from the shape without the engine): the
 * text's bytes fit the shape's pieces as shape.fits_pieces says, the text is no
 * longer than quick_query decides, and the rules and the session's state are those
 * the verdict was given under: the policy's generation is the same, the session's
 * state the same object (SessionState: a new one on every change), and nothing of
 * the session's own books applies (no SQL PREPARE kept, a spool that records). It
 * decides nothing: the verdict is Python's, with this text as its upstream_sql, as
 * EnginePolicy.decide makes it. A new reference; NULL without an error when the text
 * or the session is not one for it (Python is asked); NULL with one on error. */
static PyObject *
shape_verdict(PyObject *session, const unsigned char *text, Py_ssize_t len)
{
    PyObject *shapes = CORE(session)->shapes;
    if (shapes == NULL || !PyTuple_CheckExact(shapes) || PyTuple_GET_SIZE(shapes) == 0 ||
        CORE(session)->sql_prepared != Py_None || i_upstream_sql < 0)
        return NULL;
    /* The session's checks that look attributes up come first: a lookup may run Python
     * code, which may change the session. Nothing after them does until the copy,
     * which holds its own reference to the shapes it reads. */
    SpoolLinesObject *lines = session_lines(session);
    int accepting;
    if (lines != NULL) {
        accepting = lines->accepting; /* a load, not a lookup */
    }
    else {
        PyObject *audit = GET(session, audit);
        if (audit == NULL)
            return NULL;
        accepting = attr_true(audit, s_accepting);
        Py_DECREF(audit);
    }
    if (accepting != 1)
        return NULL;
    PyObject *policy = GET(session, policy);
    if (policy == NULL)
        return NULL;
    PyObject *now = PyObject_GetAttr(policy, s_generation);
    Py_DECREF(policy);
    if (now == NULL)
        return NULL;
    PyObject *copy = NULL, *entry = NULL;
    shapes = CORE(session)->shapes; /* again: read after the lookups */
    if (shapes == NULL || !PyTuple_CheckExact(shapes) || !PyLong_CheckExact(now)) {
        Py_DECREF(now);
        return NULL;
    }
    Py_INCREF(shapes);
    PyObject *state = CORE(session)->state; /* borrowed: compared by identity only */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(shapes) && entry == NULL; i++) {
        /* (generation, state, limit, fixed, kinds, verdict) */
        PyObject *e = PyTuple_GET_ITEM(shapes, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 6 || PyTuple_GET_ITEM(e, 1) != state)
            continue;
        PyObject *generation = PyTuple_GET_ITEM(e, 0), *limit = PyTuple_GET_ITEM(e, 2),
                 *fixed = PyTuple_GET_ITEM(e, 3), *kinds = PyTuple_GET_ITEM(e, 4),
                 *verdict = PyTuple_GET_ITEM(e, 5);
        if (!PyLong_CheckExact(generation) || !PyLong_CheckExact(limit) ||
            !PyTuple_CheckExact(fixed) || !PyBytes_CheckExact(kinds) || !PyTuple_Check(verdict) ||
            PyTuple_GET_SIZE(verdict) <= i_upstream_sql)
            continue;
        /* Exact ints: compared without any Python code. */
        int same = PyObject_RichCompareBool(now, generation, Py_EQ);
        if (same < 0)
            goto out;
        Py_ssize_t most = PyLong_AsSsize_t(limit);
        if (most == -1 && PyErr_Occurred())
            goto out;
        if (same && len <= most && fits_pieces(text, len, fixed, kinds))
            entry = e;
    }
    if (entry == NULL)
        goto out;
    /* Decoded as quick_query decodes: strictly, and Python's when that fails. */
    PyObject *sql = PyUnicode_DecodeUTF8((const char *)text, len, "strict");
    if (sql == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear();
        goto out;
    }
    /* The kept verdict with this text as its upstream_sql, of its type, made as
     * tuple.__new__(type, items) makes it (EnginePolicy.decide's way): before 3.14
     * tuple_subtype_new allocates and fills it as below; from 3.14, which caches a
     * tuple's hash in the object, through tuple.__new__ itself. */
    PyObject *verdict = PyTuple_GET_ITEM(entry, 5);
    Py_ssize_t size = PyTuple_GET_SIZE(verdict);
#if PY_VERSION_HEX < 0x030E0000
    PyObject *filled = Py_TYPE(verdict)->tp_alloc(Py_TYPE(verdict), size); /* the copy */
#else
    PyObject *filled = PyTuple_New(size); /* its items, for tuple.__new__ */
#endif
    if (filled == NULL) {
        Py_DECREF(sql);
        goto out;
    }
    for (Py_ssize_t i = 0; i < size; i++)
        PyTuple_SET_ITEM(filled, i,
                         i == i_upstream_sql ? sql : Py_NewRef(PyTuple_GET_ITEM(verdict, i)));
#if PY_VERSION_HEX < 0x030E0000
    copy = filled;
#else
    PyObject *args = PyTuple_Pack(1, filled);
    Py_DECREF(filled);
    if (args == NULL)
        goto out;
    copy = PyTuple_Type.tp_new(Py_TYPE(verdict), args, NULL);
    Py_DECREF(args);
#endif
    if (copy != NULL)
        by_shape++;
out:
    Py_DECREF(shapes);
    Py_DECREF(now);
    return copy;
}

/* A simple Query alone in the buffer, the session plain and nothing pending: the
 * verdict of a shape the session kept (shape_verdict), else the Session's
 * quick_query decides it (the relay never parses SQL) and hands back the verdict
 * when the client's bytes may go upstream as they are. 1: relayed; 0: Python's
 * (quick_query changed nothing); -1: error. */
static int
quick_query(PyObject *session, PyObject *data, long long max_message)
{
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n < 6 || buf[0] != 'Q')
        return 0;
    int32_t length = be32(buf + 1);
    if ((Py_ssize_t)length + 1 != n || length > LARGE_STATEMENT ||
        (long long)length > max_message || buf[n - 1] != 0)
        return 0;
    int done = -1;
    PyObject *raw = NULL, *verdict = NULL, *item = NULL;
    PyObject *pending = GET(session, pending);
    if (pending == NULL)
        return -1;
    Py_ssize_t waiting = PyObject_Length(pending);
    if (waiting != 0) {
        /* Statements in flight: the Session decides whether to probe first. */
        done = waiting < 0 ? -1 : 0;
        goto out;
    }
    long long started = monotonic_ns();
    verdict = shape_verdict(session, buf + 5, n - 6);
    if (verdict == NULL) {
        if (PyErr_Occurred())
            goto out;
        raw = PyBytes_FromStringAndSize((const char *)buf + 5, n - 6);
        if (raw == NULL)
            goto out;
        verdict = PyObject_CallMethodOneArg(session, s_quick_query, raw);
        if (verdict == NULL)
            goto out;
    }
    if (verdict == Py_None) {
        done = 0; /* client_data decides it, and times that */
        goto out;
    }
    if (observe_decision(session, started) < 0)
        goto out;
    int strict = true_ref(GET(session, strict));
    if (strict < 0)
        goto out;
    item = pending_item(session, verdict, Py_True, strict);
    if (item == NULL)
        goto out;
    PyObject *r = PyObject_CallMethodOneArg(pending, s_append, item);
    if (r == NULL)
        goto out;
    Py_DECREF(r);
    if (forward_upstream(session, data, strict) < 0)
        goto out;
    relayed_client++;
    done = 1;
out:
    Py_XDECREF(item);
    Py_XDECREF(verdict);
    Py_XDECREF(raw);
    Py_DECREF(pending);
    return done;
}

static PyObject *
relay_client(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "client(session, data: bytes)");
        return NULL;
    }
    if (!is_session(args[0]))
        return NULL;
    PyObject *session = args[0], *data = args[1];
    ClientStep steps[MAX_MESSAGES];
    int count = 0, plain = 0;
    long long max_message = 0;
    int hot = plan_client(session, (const unsigned char *)PyBytes_AS_STRING(data),
                          PyBytes_GET_SIZE(data), steps, &count, &plain, &max_message);
    if (hot < 0)
        return NULL;
    if (hot == 0 && plain) {
        int quick = quick_query(session, data, max_message);
        if (quick < 0)
            return NULL;
        if (quick == 1)
            Py_RETURN_NONE;
    }
    if (hot == 0 || count == 0)
        return fallback(session, s_client_data, data);

    PyObject *portals = GET(session, portals);
    PyObject *pending = GET(session, pending);
    PyObject *result = NULL;
    if (portals == NULL || pending == NULL)
        goto out;
    /* Strict audit durability: each intent is journaled by the Session's _exec, and
     * its _write holds the bytes until the journal is on disk. */
    int strict = true_ref(GET(session, strict));
    if (strict < 0)
        goto out;
    for (int i = 0; i < count; i++) {
        ClientStep *step = &steps[i];
        if (step->kind == 'B') {
            if (PyDict_SetItem(portals, step->portal, step->verdict) < 0)
                goto out;
        }
        else if (step->kind == 'E') {
            PyObject *item = pending_item(session, step->verdict, Py_False, strict);
            if (item == NULL)
                goto out;
            PyObject *r = PyObject_CallMethodOneArg(pending, s_append, item);
            Py_DECREF(item);
            if (r == NULL)
                goto out;
            Py_DECREF(r);
        }
        else if (step->kind == 'S') {
            if (SET(session, discarding, Py_False) < 0)
                goto out;
            PyObject *r = PyObject_CallMethodOneArg(pending, s_append, SYNC);
            if (r == NULL)
                goto out;
            Py_DECREF(r);
        }
    }
    if (forward_upstream(session, data, strict) < 0)
        goto out;
    relayed_client++;
    result = Py_None;
    Py_INCREF(result);
out:
    release_steps(steps, count);
    Py_XDECREF(portals);
    Py_XDECREF(pending);
    return result;
}

/* ---- upstream -> client ------------------------------------------------------ */

typedef struct {
    char kind;           /* 'C' or 'Z' */
    long long rows;      /* C: rows in its tag, or -1 */
    Py_ssize_t finish;   /* C: 1 if the head is finished; Z: how many items it pops */
    unsigned char status; /* Z */
} UpstreamStep;

/* Rows in a CommandComplete tag such as "SELECT 3" (the last word, all digits), -1 for
 * none, -2 for a count too large to follow here. */
static long long
tag_rows(const unsigned char *tag, Py_ssize_t len)
{
    while (len > 0 && tag[len - 1] == 0)
        len--;
    Py_ssize_t space = len - 1;
    while (space >= 0 && tag[space] != ' ')
        space--;
    if (space <= 0 || space == len - 1) /* no head, or nothing after the space */
        return -1;
    long long rows = 0;
    for (Py_ssize_t i = space + 1; i < len; i++) {
        if (tag[i] < '0' || tag[i] > '9')
            return -1;
        if (rows > 100000000000000LL)
            return -2; /* beyond what is followed here: Python's */
        rows = rows * 10 + (tag[i] - '0');
    }
    return rows;
}

/* Whether item is an _Exec (1), the Sync marker (2), or anything else (0). */
static int
item_kind(PyObject *item)
{
    if (item == SYNC)
        return 2;
    return Py_TYPE(item) == &ExecType;
}

/* 1: hot, steps filled; 0: Python's; -1: error. */
static int
plan_upstream(PyObject *session, PyObject *pending, const unsigned char *buf, Py_ssize_t n,
              UpstreamStep *steps, int *count)
{
    int r;
    *count = 0;
    PyObject *ubuf = GET(session, ubuf);
    if (ubuf == NULL)
        return -1;
    Py_ssize_t buffered = PyObject_Length(ubuf);
    Py_DECREF(ubuf);
    if (buffered != 0)
        return buffered < 0 ? -1 : 0;
    if ((r = true_ref(GET(session, uskip))) != 0)
        return r < 0 ? -1 : 0;
    if ((r = none_ref(GET(session, probing))) != 1)
        return r;
    /* A hold (an approval, a barrier, a COPY's start or copy) ends on a reply Python
     * must see, as the COPY's own CommandComplete: every reply is Python's then. */
    if ((r = none_ref(GET(session, hold))) != 1)
        return r;
    if ((r = none_ref(GET(session, reparsing))) != 1)
        return r;
    if ((r = none_ref(GET(session, sql_prepared))) != 1)
        return r;
    if ((r = true_ref(GET(session, cursors))) != 0)
        return r < 0 ? -1 : 0;

    Py_ssize_t waiting = PyObject_Length(pending);
    if (waiting < 0)
        return -1;
    Py_ssize_t at = 0; /* how far into pending the replies so far have gone */
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (n - pos < 5 || *count >= MAX_MESSAGES)
            return 0;
        unsigned char kind = buf[pos];
        int32_t length = be32(buf + pos + 1);
        if (length < 4)
            return 0;
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end > n)
            return 0; /* cut short (a large row is streamed by Python) */
        switch (kind) {
        case '1': case '2': case 't': case 'T': case 'n': case 'D':
            break;
        case 'C': {
            UpstreamStep *step = &steps[(*count)++];
            step->kind = 'C';
            step->rows = -1;
            step->finish = 0;
            if (at < waiting) {
                PyObject *head = PySequence_GetItem(pending, at);
                if (head == NULL)
                    return -1;
                int k = item_kind(head);
                if (k == 1) {
                    step->rows = tag_rows(buf + pos + 5, length - 4);
                    if (step->rows == -2) {
                        Py_DECREF(head);
                        return 0;
                    }
                    r = true_ref(XGET(head, is_query));
                    Py_DECREF(head);
                    if (r < 0)
                        return -1;
                    if (!r) {
                        step->finish = 1;
                        at++;
                    }
                }
                else {
                    Py_DECREF(head);
                    if (k == 0)
                        return 0; /* a probe or a Close in flight: Python's */
                }
            }
            break;
        }
        case 'Z': {
            UpstreamStep *step = &steps[(*count)++];
            step->kind = 'Z';
            step->status = buf[pos + 5];
            if (length != 5)
                return 0;
            Py_ssize_t from = at;
            while (at < waiting) {
                PyObject *head = PySequence_GetItem(pending, at);
                if (head == NULL)
                    return -1;
                int k = item_kind(head);
                if (k == 0) {
                    Py_DECREF(head);
                    return 0;
                }
                at++;
                if (k == 2) {
                    Py_DECREF(head);
                    break;
                }
                r = true_ref(XGET(head, is_query));
                Py_DECREF(head);
                if (r < 0)
                    return -1;
                if (r)
                    break;
            }
            step->finish = at - from;
            break;
        }
        default:
            return 0;
        }
        pos = end;
    }
    if (at < waiting) {
        /* What is left must be ours to pass over later too (no probe next). */
        PyObject *head = PySequence_GetItem(pending, at);
        if (head == NULL)
            return -1;
        int k = item_kind(head);
        Py_DECREF(head);
        if (k == 0)
            return 0;
    }
    return 1;
}

/* ---- the statement event ----------------------------------------------------- */

/* Event ids as audit_event.event_id makes them: UUID version 7, 48 bits of Unix
 * milliseconds and 74 random bits from the OS, read 4 KiB at a time. */
static unsigned char pool[4096];
static size_t pool_used = sizeof(pool);

static int
event_id(char out[37], long long now_ms)
{
    static const char hex[] = "0123456789abcdef";
    if (pool_used + 10 > sizeof(pool)) {
        size_t got = 0;
        while (got < sizeof(pool)) {
            ssize_t n = getrandom(pool + got, sizeof(pool) - got, 0);
            if (n < 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            got += (size_t)n;
        }
        pool_used = 0;
    }
    unsigned char b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(now_ms >> (8 * (5 - i)));
    memcpy(b + 6, pool + pool_used, 10);
    pool_used += 10;
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f)); /* version 7 */
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f)); /* variant 10xx */
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
    return 0;
}

/* Writers for the event line: each copies at w and returns the end. */
static inline char *
put_bytes(char *w, const char *text, size_t len)
{
    memcpy(w, text, len);
    return w + len;
}

#define put_text(w, literal) put_bytes((w), (literal), sizeof(literal) - 1)

/* "00" to "99": two digits per division (the event's two clocks were 430
 * instructions a digit at a time). */
static const char DIGIT_PAIRS[] = "00010203040506070809101112131415161718192021222324"
                                  "25262728293031323334353637383940414243444546474849"
                                  "50515253545556575859606162636465666768697071727374"
                                  "75767778798081828384858687888990919293949596979899";

/* The decimal digits of v >= 0. */
static char *
put_digits(char *w, long long v)
{
    char digits[24];
    int i = (int)sizeof digits;
    while (v >= 100) {
        i -= 2;
        memcpy(digits + i, DIGIT_PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        i -= 2;
        memcpy(digits + i, DIGIT_PAIRS + 2 * v, 2);
    }
    else {
        digits[--i] = (char)('0' + v);
    }
    memcpy(w, digits + i, sizeof digits - (size_t)i);
    return w + (sizeof digits - (size_t)i);
}

/* whole.fraction, the fraction zero-padded to places digits (as "%lld.%06lld"). */
static char *
put_decimal(char *w, long long whole, long long fraction, int places)
{
    w = put_digits(w, whole);
    *w++ = '.';
    int i = places;
    while (i >= 2) {
        i -= 2;
        memcpy(w + i, DIGIT_PAIRS + 2 * (fraction % 100), 2);
        fraction /= 100;
    }
    if (i)
        w[0] = (char)('0' + fraction % 10);
    return w + places;
}

/* Of a new reference v (kept in *out, the caller releases it): 1 when it is an ASCII
 * str; not a str, or not ASCII: 0; NULL (an error): -1. */
static int
ascii_ref(PyObject *v, PyObject **out)
{
    if (v == NULL)
        return -1;
    *out = v;
    return PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v);
}

/* session.metrics.statements[action] += 1 (from 0), as Metrics.recorded does, on
 * the dict the Session keeps (_recorded); a Metrics without that dict gets the call. */
static int
count_recorded(PyObject *session, PyObject *action)
{
    PyObject *statements = CORE(session)->recorded; /* borrowed */
    if (statements == NULL || !PyDict_CheckExact(statements)) {
        PyObject *metrics = GET(session, metrics);
        if (metrics == NULL)
            return -1;
        PyObject *r = PyObject_CallMethodOneArg(metrics, s_recorded, action);
        Py_DECREF(metrics);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    /* Borrowed throughout: action is an exact str (finish_native checks), so neither
     * the lookup nor the store runs Python code that could replace the dict. */
    int done = -1;
    PyObject *total = NULL;
    PyObject *before = PyDict_GetItemWithError(statements, action); /* borrowed */
    if (before == NULL && PyErr_Occurred())
        goto out;
    total = before == NULL ? PyLong_FromLong(1) : PyNumber_Add(before, ONE);
    if (total == NULL || PyDict_SetItem(statements, action, total) < 0)
        goto out;
    done = 0;
out:
    Py_XDECREF(total);
    return done;
}

/* The statement event of a successful execution, as audit_event.statement_line
 * encodes it, appended to the session's spool. 1: done; 0: not one for here (an
 * error, an approval, no verdict...): Session._finish does it; -1: error. */
static int
finish_native(PyObject *session, PyObject *item, PyObject *outcome)
{
    int done = -1, ok;
    PyObject *verdict = NULL, *event = NULL, *error = NULL, *approval = NULL,
             *fragment = NULL, *action = NULL, *base = NULL, *started = NULL, *rows = NULL,
             *journal = NULL, *audit = NULL, *line = NULL;
    verdict = XGET(item, verdict);
    if (verdict == NULL)
        goto out;
    done = 0;
    if (verdict == Py_None)
        goto out;
    error = XGET(item, error);
    approval = error == NULL ? NULL : verdict_get(verdict, s_approval_id, i_approval_id);
    if (approval == NULL)
        goto fail;
    if (error != Py_None || approval != Py_None)
        goto out;
    if ((ok = ascii_ref(verdict_get(verdict, s_audit_fragment, i_audit_fragment), &fragment)) != 1)
        goto check;
    if ((ok = ascii_ref(verdict_get(verdict, s_action, i_action), &action)) != 1)
        goto check;
    if ((ok = ascii_ref(XGET(item, base), &base)) != 1)
        goto check;
    if (PyUnicode_GET_LENGTH(base) == 0) {
        Py_CLEAR(base);
        if ((ok = ascii_ref(GET(session, base_json), &base)) != 1)
            goto check;
    }
    event = XGET(item, event);
    started = event == NULL ? NULL : XGET(item, started);
    rows = started == NULL ? NULL : XGET(item, rows);
    journal = rows == NULL ? NULL : XGET(item, journal);
    if (journal == NULL)
        goto fail;
    if (!PyLong_CheckExact(started) || (rows != Py_None && !PyLong_CheckExact(rows)) ||
        (event != Py_None && !(PyUnicode_CheckExact(event) && PyUnicode_IS_ASCII(event))))
        goto out;

    struct timespec wall, mono;
    clock_gettime(CLOCK_REALTIME, &wall);
    clock_gettime(CLOCK_MONOTONIC, &mono); /* time.perf_counter_ns's clock */
    long long now_us = (long long)wall.tv_sec * 1000000LL + wall.tv_nsec / 1000;
    long long began = as_long_long(started);
    long long count = rows == Py_None ? -1 : as_long_long(rows);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            goto fail;
        PyErr_Clear(); /* a count past 64 bits: Session._finish writes it */
        goto out;
    }
    long long took = ((long long)mono.tv_sec * 1000000000LL + mono.tv_nsec - began) / 1000;
    if (took < 0)
        took = 0;

    char id[37];
    const char *event_text;
    if (event == Py_None) {
        if (event_id(id, now_us / 1000) < 0)
            goto fail;
        event_text = id;
    }
    else {
        event_text = (const char *)PyUnicode_1BYTE_DATA(event);
    }
    /* Everything up to the session's members: short, bounded, formatted once, by
     * hand (snprintf alone cost more than the rest of the event). */
    char head[512]; /* at most about 380: the lengths are checked below */
    size_t event_len = strlen(event_text);
    Py_ssize_t action_len = PyUnicode_GET_LENGTH(action), outcome_len = 0;
    const char *outcome_text = PyUnicode_AsUTF8AndSize(outcome, &outcome_len);
    if (outcome_text == NULL)
        goto fail;
    if (event_len > 64 || action_len > 64 || outcome_len > 64)
        goto out; /* not an event this relay writes: Session._finish does */
    char *h = head;
    h = put_text(h, "\"id\":\"");
    h = put_bytes(h, event_text, event_len);
    h = put_text(h, "\",\"type\":\"statement\",\"ts\":");
    h = put_decimal(h, now_us / 1000000, now_us % 1000000, 6);
    h = put_text(h, ",\"action\":\"");
    h = put_bytes(h, (const char *)PyUnicode_1BYTE_DATA(action), (size_t)action_len);
    h = put_text(h, "\",\"outcome\":\"");
    h = put_bytes(h, outcome_text, (size_t)outcome_len);
    h = put_text(h, "\",\"rows\":");
    h = count < 0 ? put_text(h, "null") : put_digits(h, count);
    h = put_text(h, ",\"duration_ms\":");
    h = put_decimal(h, took / 1000, took % 1000, 3);
    h = put_text(h, ","); /* no error: no error_sqlstate member (statement_line) */
    int head_len = (int)(h - head);
    Py_ssize_t stamp_len = PyUnicode_GET_LENGTH(STAMP), base_len = PyUnicode_GET_LENGTH(base),
               extra_len = PyUnicode_GET_LENGTH(fragment);
    Py_ssize_t total = 1 + stamp_len + head_len + base_len + (extra_len ? 1 + extra_len : 0) + 1;
    audit = GET(session, audit);
    if (audit == NULL)
        goto fail;
    /* Into the spool's native lines while it takes them; a full spool's append_line
     * decides what happens to the event (dropped and counted, under "drop"). */
    SpoolLinesObject *lines = session_lines(session);
    char *w;
    if (lines != NULL && lines->open) {
        w = lines_reserve(lines, total + 1);
        if (w == NULL)
            goto fail;
    }
    else {
        lines = NULL;
        line = PyUnicode_New(total, 127);
        if (line == NULL)
            goto fail;
        w = (char *)PyUnicode_1BYTE_DATA(line);
    }
    *w++ = '{';
    memcpy(w, PyUnicode_1BYTE_DATA(STAMP), (size_t)stamp_len);
    w += stamp_len;
    memcpy(w, head, (size_t)head_len);
    w += head_len;
    memcpy(w, PyUnicode_1BYTE_DATA(base), (size_t)base_len);
    w += base_len;
    if (extra_len) {
        *w++ = ',';
        memcpy(w, PyUnicode_1BYTE_DATA(fragment), (size_t)extra_len);
        w += extra_len;
    }
    *w++ = '}';
    PyObject *r;
    if (lines != NULL) {
        *w = '\n';
        lines->size += total + 1;
        lines->count++;
        /* AuditSpool.append_line's flush when flush_events lines wait */
        r = lines->count >= lines->limit ? PyObject_CallMethodNoArgs(audit, s_flush)
                                         : Py_NewRef(Py_None);
    }
    else {
        r = PyObject_CallMethodOneArg(audit, s_append_line, line);
    }
    if (r == NULL)
        goto fail;
    Py_DECREF(r);
    ok = PyObject_IsTrue(journal);
    if (ok < 0)
        goto fail;
    if (ok) {
        r = PyObject_CallMethodOneArg(audit, s_resolved, journal);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    /* The heartbeat's statement counters count what the audit trail records:
     * Metrics.recorded's increment, on its dict, without the call. */
    if (count_recorded(session, action) < 0)
        goto fail;
    done = 1;
    goto out;
check:
    if (ok >= 0)
        goto out;
fail:
    done = -1;
out:
    Py_XDECREF(verdict);
    Py_XDECREF(event);
    Py_XDECREF(error);
    Py_XDECREF(approval);
    Py_XDECREF(fragment);
    Py_XDECREF(action);
    Py_XDECREF(base);
    Py_XDECREF(started);
    Py_XDECREF(rows);
    Py_XDECREF(journal);
    Py_XDECREF(audit);
    Py_XDECREF(line);
    return done;
}

static int
finish(PyObject *session, PyObject *item, PyObject *outcome)
{
    int done = finish_native(session, item, outcome);
    if (done != 0)
        return done < 0 ? -1 : 0;
    PyObject *args[3] = {session, item, outcome};
    PyObject *r = PyObject_VectorcallMethod(s_finish, args, 3, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
popleft(PyObject *pending)
{
    return PyObject_CallMethodNoArgs(pending, s_popleft);
}

static PyObject *
relay_upstream(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "upstream(session, data: bytes)");
        return NULL;
    }
    if (!is_session(args[0]))
        return NULL;
    PyObject *session = args[0], *data = args[1];
    PyObject *pending = GET(session, pending);
    if (pending == NULL)
        return NULL;
    UpstreamStep steps[MAX_MESSAGES];
    int count = 0;
    int hot = plan_upstream(session, pending, (const unsigned char *)PyBytes_AS_STRING(data),
                            PyBytes_GET_SIZE(data), steps, &count);
    if (hot <= 0) {
        Py_DECREF(pending);
        if (hot < 0)
            return NULL;
        return fallback(session, s_upstream_data, data);
    }
    PyObject *result = NULL, *client = NULL;
    for (int i = 0; i < count; i++) {
        UpstreamStep *step = &steps[i];
        if (step->kind == 'C') {
            if (step->rows >= 0) {
                PyObject *head = PySequence_GetItem(pending, 0);
                if (head == NULL)
                    goto out;
                if (!expect_exec(head)) {
                    Py_DECREF(head);
                    goto out;
                }
                PyObject *had = XGET(head, rows);
                if (had == NULL) {
                    Py_DECREF(head);
                    goto out;
                }
                /* Python's arithmetic: an earlier count may be past 64 bits. */
                PyObject *more = PyLong_FromLongLong(step->rows);
                PyObject *rows = more == NULL ? NULL
                                 : had == Py_None ? Py_NewRef(more)
                                                  : PyNumber_Add(had, more);
                Py_XDECREF(more);
                Py_DECREF(had);
                int set = rows == NULL ? -1 : core_set(&EX(head)->rows, rows);
                Py_XDECREF(rows);
                Py_DECREF(head);
                if (set < 0)
                    goto out;
            }
            if (step->finish) {
                PyObject *item = popleft(pending);
                if (item == NULL)
                    goto out;
                if (!expect_exec(item)) {
                    Py_DECREF(item);
                    goto out;
                }
                int f = finish(session, item, s_allowed);
                Py_DECREF(item);
                if (f < 0)
                    goto out;
            }
        }
        else { /* Z */
            if (SET(session, status, status_bytes[step->status]) < 0)
                goto out;
            for (Py_ssize_t k = 0; k < step->finish; k++) {
                PyObject *item = popleft(pending);
                if (item == NULL)
                    goto out;
                if (item == SYNC) {
                    Py_DECREF(item);
                    continue;
                }
                if (!expect_exec(item)) {
                    Py_DECREF(item);
                    goto out;
                }
                int errored = true_ref(XGET(item, error));
                int query = errored < 0 ? -1 : true_ref(XGET(item, is_query));
                if (query < 0) {
                    Py_DECREF(item);
                    goto out;
                }
                int f = finish(session, item, errored || !query ? s_error : s_allowed);
                Py_DECREF(item);
                if (f < 0)
                    goto out;
            }
            Py_ssize_t left = PyObject_Length(pending);
            if (left < 0)
                goto out;
            if (left == 0) {
                PyObject *refusals = GET(session, refusals);
                if (refusals == NULL)
                    goto out;
                if (PyDict_Check(refusals) && PyDict_GET_SIZE(refusals))
                    PyDict_Clear(refusals);
                Py_DECREF(refusals);
            }
        }
    }
    client = GET(session, client);
    if (client == NULL)
        goto out;
    PyObject *fd = GET(session, client_fd);
    int sent = fd == NULL ? -1 : send_to(client, fd, data);
    Py_XDECREF(fd);
    if (sent < 0)
        goto out;
    relayed_upstream++;
    result = Py_None;
    Py_INCREF(result);
out:
    Py_XDECREF(client);
    Py_DECREF(pending);
    return result;
}

/* The index of name in fields (a tuple of str), or -1. */
static Py_ssize_t
field_index(PyObject *fields, const char *name)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        PyObject *field = PyTuple_GET_ITEM(fields, i);
        if (PyUnicode_Check(field) && PyUnicode_CompareWithASCIIString(field, name) == 0)
            return i;
    }
    return -1;
}

static PyObject *
relay_configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyUnicode_CheckExact(args[1]) || !PyUnicode_IS_ASCII(args[1]) ||
        !PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(sync_marker, stamp: str, verdict: a NamedTuple type)");
        return NULL;
    }
    PyObject *fields = PyObject_GetAttrString(args[2], "_fields");
    if (fields == NULL)
        return NULL;
    if (!PyTuple_Check(fields)) {
        Py_DECREF(fields);
        PyErr_SetString(PyExc_TypeError, "the verdict type's _fields is not a tuple");
        return NULL;
    }
    i_action = field_index(fields, "action");
    i_upstream_sql = field_index(fields, "upstream_sql");
    i_audit_fragment = field_index(fields, "audit_fragment");
    i_approval_id = field_index(fields, "approval_id");
    i_plain = field_index(fields, "plain");
    i_barrier = field_index(fields, "barrier");
    Py_DECREF(fields);
    Py_XSETREF(SYNC, Py_NewRef(args[0]));
    Py_XSETREF(STAMP, Py_NewRef(args[1]));
    Py_XSETREF(VERDICT, (PyTypeObject *)Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *
relay_stats(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K}", "client", relayed_client, "upstream",
                         relayed_upstream, "direct", sent_direct, "shapes", by_shape);
}

static PyObject *
relay_fits_shape(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyTuple_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fits_shape(text: bytes, fixed: tuple, kinds: bytes)");
        return NULL;
    }
    return PyBool_FromLong(fits_pieces((const unsigned char *)PyBytes_AS_STRING(args[0]),
                                       PyBytes_GET_SIZE(args[0]), args[1], args[2]));
}

static PyMethodDef relay_methods[] = {
    {"stats", relay_stats, METH_NOARGS,
     "stats(): buffers relayed natively so far in this process, each way, writes sent "
     "to a socket past its transport (direct), and simple Queries given their session's "
     "one-integer shape's verdict (shapes)."},
    {"client", (PyCFunction)(void (*)(void))relay_client, METH_FASTCALL,
     "client(session, data): relay a client buffer of hot messages, else hand it to "
     "session.client_data."},
    {"upstream", (PyCFunction)(void (*)(void))relay_upstream, METH_FASTCALL,
     "upstream(session, data): relay a server buffer of hot messages, else hand it to "
     "session.upstream_data."},
    {"fits_shape", (PyCFunction)(void (*)(void))relay_fits_shape, METH_FASTCALL,
     "fits_shape(text, fixed, kinds): the relay's shape.fits_pieces, on bytes (for tests)."},
    {"configure", (PyCFunction)(void (*)(void))relay_configure, METH_FASTCALL,
     "configure(sync_marker, stamp, verdict): the Session module's Sync marker, the "
     "events' schema version member and the Verdict type (its fields read by index)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "_relay", "The sidecar's native relay of hot messages.", -1,
    relay_methods,
};

#define INTERN(var, text)                                                                   \
    do {                                                                                    \
        var = PyUnicode_InternFromString(text);                                             \
        if (var == NULL)                                                                    \
            return NULL;                                                                    \
    } while (0)

PyMODINIT_FUNC
PyInit__relay(void)
{
    INTERN(s_generation, "generation");
    INTERN(s_state, "state");
    INTERN(s_verdict, "verdict");
    INTERN(s_plain, "plain");
    INTERN(s_barrier, "barrier");
    INTERN(s_write, "write");
    INTERN(s_client_data, "client_data");
    INTERN(s_upstream_data, "upstream_data");
    INTERN(s_error, "error"); /* the outcome of that name */
    INTERN(s_finish, "_finish");
    INTERN(s_append, "append");
    INTERN(s_popleft, "popleft");
    INTERN(s_allowed, "allowed");
    INTERN(s_exec, "_exec");
    INTERN(s_append_line, "append_line");
    INTERN(s_resolved, "resolved");
    INTERN(s_approval_id, "approval_id");
    INTERN(s_audit_fragment, "audit_fragment");
    INTERN(s_action, "action");
    INTERN(s_recorded, "recorded");
    INTERN(s_session_write, "_write");
    INTERN(s_quick_query, "quick_query");
    INTERN(s_get_write_buffer_size, "get_write_buffer_size");
    INTERN(s_is_closing, "is_closing");
    INTERN(s_observe, "observe");
    INTERN(s_accepting, "accepting");
    INTERN(s_flush, "flush");
    ONE = PyLong_FromLong(1);
    if (ONE == NULL)
        return NULL;
    for (int i = 0; i < 256; i++) {
        char c = (char)i;
        status_bytes[i] = PyBytes_FromStringAndSize(&c, 1);
        if (status_bytes[i] == NULL)
            return NULL;
    }
    EMPTY = PyUnicode_FromString("");
    if (EMPTY == NULL || PyType_Ready(&SessionCoreType) < 0 || PyType_Ready(&ExecType) < 0 ||
        PyType_Ready(&HistogramType) < 0 || PyType_Ready(&SpoolLinesType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "SessionCore", (PyObject *)&SessionCoreType) < 0 ||
        PyModule_AddObjectRef(module, "Exec", (PyObject *)&ExecType) < 0 ||
        PyModule_AddObjectRef(module, "Histogram", (PyObject *)&HistogramType) < 0 ||
        PyModule_AddObjectRef(module, "SpoolLines", (PyObject *)&SpoolLinesType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
