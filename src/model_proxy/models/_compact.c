/* The compact wire-format writer: "0,10,255," for the bytes 0, 10, 255.
 *
 * write_values(source, out) writes the decimal value of every byte of `source`
 * followed by a comma at the start of `out` and returns how many bytes it wrote.
 * models/encoder.py adds the brackets and quotes. It runs without the GIL, so
 * the encoder threads use both cores.
 *
 * Why C: variable-width text does not vectorise in numpy (a scatter to prefix-sum
 * offsets runs at about 130 MB/s, orjson at about 160 MB/s, against 900-1,700 MB/s
 * for the fixed-width table lookup it replaces); this loop matches the table
 * lookup (benchmarks/encoder.py, docs/performance.md "The encoder").
 *
 * How: a table of the 8-byte text of every *pair* of bytes ("255,255," is the
 * longest) and its length. Each step reads 8 input bytes, looks up 4 pairs and
 * stores 8 bytes at each pair's offset; the next store overwrites the unused tail
 * of the one before. A store therefore reaches up to 8 bytes past a pair's text,
 * never past 4 bytes per input byte, which `out` must hold.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static char value_text[256][4];
static uint8_t value_length[256];
static char pair_text[65536][8];
static uint8_t pair_length[65536];

static void fill_tables(void)
{
    for (int value = 0; value < 256; value++) {
        char text[8];
        int length = snprintf(text, sizeof text, "%d,", value);
        memset(value_text[value], 0, sizeof value_text[value]);
        memcpy(value_text[value], text, (size_t)length);
        value_length[value] = (uint8_t)length;
    }
    /* A pair is indexed first byte low, second byte high, as a little-endian
     * load would read it; the index is built from bytes, so it is endian-safe. */
    for (int pair = 0; pair < 65536; pair++) {
        int first = pair & 0xFF, second = pair >> 8;
        memset(pair_text[pair], 0, sizeof pair_text[pair]);
        memcpy(pair_text[pair], value_text[first], value_length[first]);
        memcpy(pair_text[pair] + value_length[first], value_text[second], value_length[second]);
        pair_length[pair] = (uint8_t)(value_length[first] + value_length[second]);
    }
}

static Py_ssize_t write_text(const uint8_t *restrict source, Py_ssize_t size, char *restrict out)
{
    char *restrict at = out;
    Py_ssize_t index = 0;
    for (; index + 7 < size; index += 8) {
        const uint8_t *in = source + index;
        unsigned a = in[0] | (unsigned)in[1] << 8, b = in[2] | (unsigned)in[3] << 8;
        unsigned c = in[4] | (unsigned)in[5] << 8, d = in[6] | (unsigned)in[7] << 8;
        unsigned to_b = pair_length[a];
        unsigned to_c = to_b + pair_length[b];
        unsigned to_d = to_c + pair_length[c];
        unsigned end = to_d + pair_length[d];
        memcpy(at, pair_text[a], 8);
        memcpy(at + to_b, pair_text[b], 8);
        memcpy(at + to_c, pair_text[c], 8);
        memcpy(at + to_d, pair_text[d], 8);
        at += end;
    }
    for (; index < size; index++) {
        memcpy(at, value_text[source[index]], 4);
        at += value_length[source[index]];
    }
    return at - out;
}

static PyObject *write_values(PyObject *module, PyObject *args)
{
    Py_buffer source, out;
    if (!PyArg_ParseTuple(args, "y*w*:write_values", &source, &out))
        return NULL;
    if (out.len / 4 < source.len) {
        PyErr_Format(PyExc_ValueError, "the output buffer holds %zd bytes, the text needs up to %zd",
                     out.len, 4 * source.len);
        PyBuffer_Release(&source);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t length;
    Py_BEGIN_ALLOW_THREADS
    length = write_text(source.buf, source.len, out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&source);
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(length);
}

static PyMethodDef methods[] = {
    {"write_values", write_values, METH_VARARGS,
     "write_values(source, out) -> int: the text '0,10,255,' of source's bytes at the start of out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "model_proxy.models._compact", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__compact(void)
{
    fill_tables();
    return PyModule_Create(&module);
}
