// Walks of the Python classes' per-parameter state dicts (python/holocron_optim/_walks.py),
// called through ctypes.PyDLL, with the GIL held.
//
// A Python step over thousands of small parameters checks that every state still holds the
// buffers pinned after its last step, reads every counter and stores the next: walks over dicts
// that the last step's sweep of every buffer left cold, one cache miss after another in the
// interpreter (about 0.8 ms a step over 3000 parameters with two buffers). Here each dict, and
// its table of keys, is requested from memory ahead of its turn, so that those misses overlap.
//
// The library does not link libpython, so that C++ programs load it without Python: the
// functions of CPython's stable ABI called here are weak references, which the dynamic linker
// resolves where the library is loaded into a Python process (the interpreter exports them) and
// leaves null elsewhere, where nothing calls these functions. holocron_walks_ready() says which.

#include <cstddef>
#include <cstdint>

namespace {

using PyObj = void;
using Py_ssize_t = std::intptr_t;

// A dict's header and its table of keys, requested kAhead dicts before its turn: the table's
// address is read from the header once that has arrived, kAhead / 2 dicts later.
constexpr Py_ssize_t kAhead = 16;

}  // namespace

extern "C" {
__attribute__((weak)) PyObj* PyDict_GetItem(PyObj* dict, PyObj* key);
__attribute__((weak)) int PyObject_SetItem(PyObj* object, PyObj* key, PyObj* value);
__attribute__((weak)) Py_ssize_t PyList_Size(PyObj* list);
__attribute__((weak)) PyObj* PyList_GetItem(PyObj* list, Py_ssize_t index);
__attribute__((weak)) extern char PyDict_Type;
}

namespace {

bool ready() {
  return PyDict_GetItem != nullptr && PyObject_SetItem != nullptr && PyList_Size != nullptr &&
         PyList_GetItem != nullptr && &PyDict_Type != nullptr;
}

// Where CPython (3.8 to 3.14, without free threading) keeps an object's type and a dict's table of
// keys. Only prefetches read them, and only in an object whose type field holds &PyDict_Type: in
// another layout they request the wrong lines, which costs speed, never a wrong result.
constexpr std::size_t kTypeOffset = sizeof(Py_ssize_t);
constexpr std::size_t kDictKeysOffset = 2 * sizeof(void*) + sizeof(Py_ssize_t) + sizeof(std::uint64_t);

void prefetch_ahead(PyObj* states, Py_ssize_t i, Py_ssize_t n) {
  if (i + kAhead < n) __builtin_prefetch(PyList_GetItem(states, i + kAhead));
  if (i + kAhead / 2 < n) {
    const char* dict = static_cast<const char*>(PyList_GetItem(states, i + kAhead / 2));
    if (*reinterpret_cast<const void* const*>(dict + kTypeOffset) == &PyDict_Type) {
      const char* keys = *reinterpret_cast<const char* const*>(dict + kDictKeysOffset);
      __builtin_prefetch(keys);
      __builtin_prefetch(keys + 64);
    }
  }
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int holocron_walks_ready() { return ready() ? 1 : 0; }

// 1 where every states[i] is a dict holding `expected[i]` itself under `key`; 0 otherwise (a
// missing entry, another object, a state that is not a dict, lists of different lengths).
__attribute__((visibility("default"))) int holocron_entries_are(PyObj* states, PyObj* key, PyObj* expected) {
  const Py_ssize_t n = PyList_Size(states);
  if (n < 0 || PyList_Size(expected) != n) return 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_ahead(states, i, n);
    PyObj* const held = PyDict_GetItem(PyList_GetItem(states, i), key);  // null for a non-dict
    if (held == nullptr || held != PyList_GetItem(expected, i)) return 0;
  }
  return 1;
}

// 1 where every states[i] is a dict holding `value` itself under `key`; 0 otherwise.
__attribute__((visibility("default"))) int holocron_entries_all(PyObj* states, PyObj* key, PyObj* value) {
  const Py_ssize_t n = PyList_Size(states);
  if (n < 0) return 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_ahead(states, i, n);
    if (PyDict_GetItem(PyList_GetItem(states, i), key) != value) return 0;
  }
  return 1;
}

// states[i][key] = value for every i, in order; -1 with the exception of the first that fails.
__attribute__((visibility("default"))) int holocron_set_entries(PyObj* states, PyObj* key, PyObj* value) {
  const Py_ssize_t n = PyList_Size(states);
  if (n < 0) return -1;
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_ahead(states, i, n);
    if (PyObject_SetItem(PyList_GetItem(states, i), key, value) < 0) return -1;
  }
  return 0;
}

}  // extern "C"
