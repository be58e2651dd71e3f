"""Reads a legacy (pre-zip) PyTorch `.pth` state dict into numpy arrays without torch.

Format (torch/serialization.py, `_legacy_load`): pickles of the magic number, protocol
version and sys info; the main pickle, whose tensors refer to storages by persistent id;
a pickle listing storage keys; then, per key in that order, an int64 element count and the
raw little-endian bytes.
"""
import collections
import pickle
import struct

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, kind, key, numel):
        self.dtype = np.dtype(_DTYPES[kind])
        self.key, self.numel, self.data = key, numel, None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self):
        flat = self.storage.data
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride))
        return np.ascontiguousarray(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *_: _Tensor(storage, offset, size, stride)
        if module == "torch" and name in _DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a state dict")

    def persistent_load(self, pid):
        _, kind, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(kind, key, numel)
        return self.storages[key]


def load_state_dict(path):
    """name -> numpy array, in file order."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != 0x1950A86A20F9469CFC6C:
            raise ValueError(f"{path}: not a legacy torch file (magic {magic!r})")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        u = _Unpickler(f)
        state = u.load()
        keys = pickle.load(f)
        for key in keys:
            s = u.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            s.data = np.frombuffer(f.read(numel * s.dtype.itemsize), dtype=s.dtype)
    if "state_dict" in state:
        state = state["state_dict"]
    return collections.OrderedDict((k, v.array()) for k, v in state.items())
