"""Reading and writing IDX files (the MNIST / Fashion-MNIST container format).

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, one dtype code byte,
one byte with the number of dimensions, then one big-endian uint32 per dimension,
then the row-major payload. Files may be gzip-compressed; they are recognised by
the gzip magic bytes, not by their name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from regnet_jax.data.errors import CorruptDatasetError

# IDX dtype codes -> numpy dtypes (multi-byte types are big-endian in the file).
_DTYPES: dict[int, np.dtype] = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER_BYTES = 4 + 4 * 255


def _parse_header(data: bytes, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
  """Returns (dtype, shape, payload offset) of an IDX file's leading bytes."""
  if len(data) < 4:
    raise CorruptDatasetError(f"{source}: {len(data)} bytes is too short for an IDX header (4 bytes or more)")
  zero, code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or code not in _DTYPES:
    raise CorruptDatasetError(
      f"{source}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000 followed by a dtype code in "
      f"{sorted(hex(c) for c in _DTYPES)} and the number of dimensions"
    )
  offset = 4 + 4 * ndim
  if ndim == 0 or len(data) < offset:
    raise CorruptDatasetError(f"{source}: IDX header announces {ndim} dimensions but the header is truncated or empty")
  shape = struct.unpack(f">{ndim}I", data[4:offset])
  return _DTYPES[code], tuple(int(d) for d in shape), offset


def _decompress(raw: bytes, source: str) -> bytes:
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise CorruptDatasetError(f"{source}: gzip stream is damaged ({e}); re-install or re-download the file") from e


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
  """Parses the bytes of an (optionally gzipped) IDX file into an array in native byte order."""
  data = _decompress(data, source)
  dtype, shape, offset = _parse_header(data, source)
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - offset != expected:
    raise CorruptDatasetError(
      f"{source}: IDX header announces shape {shape} of {dtype.name} ({expected} payload bytes) but the file "
      f"holds {len(data) - offset}; the file is truncated or not an IDX file"
    )
  array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
  # Native byte order so downstream code (jax) never sees a big-endian dtype.
  return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (plain or gzipped) into memory."""
  with open(path, "rb") as f:
    return parse_idx(f.read(), source=os.fspath(path))


def read_idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
  """Returns the shape an IDX file announces, reading only its header (cheap even when gzipped)."""
  source = os.fspath(path)
  with open(path, "rb") as f:
    is_gzip = f.read(2) == _GZIP_MAGIC
  opener = gzip.open if is_gzip else open
  try:
    with opener(path, "rb") as f:
      head = f.read(_MAX_HEADER_BYTES)
  except (OSError, EOFError, zlib.error) as e:
    raise CorruptDatasetError(f"{source}: gzip stream is damaged ({e}); re-install or re-download the file") from e
  return _parse_header(head, source)[1]


def encode_idx(array: np.ndarray) -> bytes:
  """Serialises an array as IDX bytes (uncompressed)."""
  array = np.asarray(array)
  native = array.dtype.newbyteorder("=")
  if native not in _CODES:
    raise ValueError(f"IDX cannot store dtype {array.dtype}; supported: {sorted(str(d) for d in _CODES)}")
  if not 1 <= array.ndim <= 255:
    raise ValueError(f"IDX stores 1 to 255 dimensions, got shape {array.shape}")
  code = _CODES[native]
  header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
  return header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an IDX file, gzip-compressed when the path ends in '.gz'."""
  data = encode_idx(array)
  if os.fspath(path).endswith(".gz"):
    data = gzip.compress(data)
  with open(path, "wb") as f:
    f.write(data)
