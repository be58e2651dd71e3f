"""Reads one object from an R package's lazy-load database (`Rdata.rdx` + `Rdata.rdb`)
without R, using the PyPI `rdata` parser. The index is a gzip-compressed RDS mapping names
to (offset, length) in the .rdb; each blob is a 4-byte big-endian length, a type byte and
the serialized object ('Z' = raw LZMA2 at preset 9|extreme, as R writes it, '2' = bzip2,
'0' = none; no type byte means zlib)."""
import bz2
import gzip
import lzma
import warnings
import zlib

import rdata


def _parse(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialization "assumed RDS"
        return rdata.conversion.convert(rdata.parser.parse_data(data))


def read_object(data_dir, name):
    index = _parse(gzip.open(f"{data_dir}/Rdata.rdx").read())
    variables = index["variables"]
    if name not in variables:
        raise KeyError(f"{name} not in {data_dir}; it holds {sorted(map(str, variables))}")
    offset, length = (int(x) for x in variables[name])
    with open(f"{data_dir}/Rdata.rdb", "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    kind, body = blob[4:5], blob[5:]
    if kind == b"Z":
        data = lzma.decompress(body, format=lzma.FORMAT_RAW,
                               filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
    elif kind == b"2":
        data = bz2.decompress(body)
    elif kind == b"0":
        data = body
    else:
        data = zlib.decompress(blob[4:])
    return _parse(data)
