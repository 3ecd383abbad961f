// Walks of the Python classes' per-parameter state dicts (`state_walks` in
// python/holocron_optim/_base.py), called through ctypes.PyDLL, with the GIL held.
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

#include "ops.h"

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
// keys. The type field is read in every object (all begin with a reference count and a type); the
// table only where that field holds &PyDict_Type, and only to prefetch it. In another layout (a
// free-threaded build) no object reads as a dict: the prefetches are lost, and holocron_entries_all
// answers 0, which sends the step to the Python walk.
constexpr std::size_t kTypeOffset = sizeof(Py_ssize_t);
constexpr std::size_t kDictKeysOffset = 2 * sizeof(void*) + sizeof(Py_ssize_t) + sizeof(std::uint64_t);

bool is_exact_dict(const void* object) {
  return *reinterpret_cast<const void* const*>(static_cast<const char*>(object) + kTypeOffset) == &PyDict_Type;
}

// states[i], or null past its end: the list is read afresh at every turn, since code a walk calls
// (a mapping's __setitem__, a key's __eq__) could shorten it.
PyObj* item(PyObj* states, Py_ssize_t i) { return i < PyList_Size(states) ? PyList_GetItem(states, i) : nullptr; }

void prefetch_ahead(PyObj* states, Py_ssize_t i) {
  if (PyObj* const ahead = item(states, i + kAhead)) __builtin_prefetch(ahead);
  if (PyObj* const dict = item(states, i + kAhead / 2); dict != nullptr && is_exact_dict(dict)) {
    const char* keys = *reinterpret_cast<const char* const*>(static_cast<const char*>(dict) + kDictKeysOffset);
    __builtin_prefetch(keys);
    __builtin_prefetch(keys + 64);
  }
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int holocron_walks_ready() { return ready() ? 1 : 0; }

// 1 where every states[i] is a dict (or a subclass: read as dict.get reads it) holding `expected[i]`
// itself under `key`; 0 otherwise (a missing entry, another object, a state that is not a dict,
// lists of different lengths). Both must be lists.
__attribute__((visibility("default"))) int holocron_entries_are(PyObj* states, PyObj* key, PyObj* expected) {
  const Py_ssize_t n = PyList_Size(states);
  if (PyList_Size(expected) != n) return 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_ahead(states, i);
    PyObj* const state = item(states, i);
    PyObj* const wanted = item(expected, i);
    if (state == nullptr || wanted == nullptr) return 0;
    PyObj* const held = PyDict_GetItem(state, key);  // borrowed, only compared; null for a non-dict
    if (held == nullptr || held != wanted) return 0;
  }
  return 1;
}

// 1 where every states[i] is a dict, not a subclass (whose __getitem__ may answer otherwise than
// its storage), holding `value` itself under `key`; 0 otherwise. `states` must be a list.
__attribute__((visibility("default"))) int holocron_entries_all(PyObj* states, PyObj* key, PyObj* value) {
  const Py_ssize_t n = PyList_Size(states);
  for (Py_ssize_t i = 0; i < n; ++i) {
    prefetch_ahead(states, i);
    PyObj* const state = item(states, i);
    if (state == nullptr || !is_exact_dict(state) || PyDict_GetItem(state, key) != value) return 0;
  }
  return 1;
}

// states[i][key] = value for each i in order, as `setitem` would; -1 with the exception of the first
// that fails. `states` must be a list.
__attribute__((visibility("default"))) int holocron_set_entries(PyObj* states, PyObj* key, PyObj* value) {
  for (Py_ssize_t i = 0; i < PyList_Size(states); ++i) {
    prefetch_ahead(states, i);
    if (PyObject_SetItem(PyList_GetItem(states, i), key, value) < 0) return -1;
  }
  return 0;
}

// 1 where `params` (a list) holds, in order, the PyObjects that the BorrowedParams at `refs` was
// made from, each still holding the tensor it borrowed (ops::BorrowedParams::borrowed_from); 0
// otherwise. The op may then take `refs` for them, while the caller holds the list.
__attribute__((visibility("default"))) int holocron_params_are(PyObj* params, const void* refs) {
  const auto& borrowed = *static_cast<const holocron::optim::ops::BorrowedParams*>(refs);
  const Py_ssize_t n = PyList_Size(params);
  if (n < 0 || static_cast<std::size_t>(n) != borrowed.size()) return 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (PyObj* const ahead = item(params, i + kAhead)) __builtin_prefetch(ahead);
    PyObj* const p = item(params, i);
    if (p == nullptr || !borrowed.borrowed_from(static_cast<std::size_t>(i), p)) return 0;
  }
  return 1;
}

}  // extern "C"
