"""The artifact (model.blob) format: every constant, defined once; the reader (`decoder`) and the
writer (`artifact.container`) both use these names. The field table is artifact/docs/container.md.

Blob = HEAD bytes (MAGIC, VERSION u8, packed manifest length u32, raw manifest length u32, all
little-endian) + the manifest (JSON, raw deflate) + the streams back to back + DIGEST: the first
16 bytes of SHA-256 of all before it (so every name, dtype, bit width, shape and the stream layout
is under a strong hash, and every value under its tensor's hash too).

Bounds (checked before anything is allocated; artifact/docs/container.md, "Bounded work"): the
decoding work a blob may ask for is WORK_FLOOR + WORK_PER_BYTE units per byte of blob, a unit
being one raw stream byte or one output element (times 1 + its LQER rank). Quantized weights at
b bits each cost ~16/b units per stored byte (record-1855 on the bundled checkpoint: 7.0; a
512-wide matrix at 2 bits with a rank-8 LQER correction: ~40): 64 admits 0.25 bits per weight.
"""

MAGIC = b"GOLF"
VERSION = 2
HEAD = 13  # magic 4 + version 1 + packed manifest length 4 + raw manifest length 4
DIGEST = 16  # the trailer: SHA-256 of every byte before it, first 16 bytes
MAX_BLOB = 1 << 30  # bytes of a whole artifact
MAX_MANIFEST = 1 << 22  # raw manifest bytes (real manifests: ~150 bytes per tensor)
MANIFEST_SLACK = 4096  # a manifest inflates to at most SLACK + WORK_PER_BYTE x its packed bytes (real: ~4x)
MAX_ELEMENTS = 1 << 28  # elements of all tensors together (1 GiB of float32)
WORK_FLOOR = 1 << 22  # decoding work any blob may ask for (see above)
WORK_PER_BYTE = 64  # and per byte of blob
MAX_DIMS = 8

# ---- manifest, top level
STREAMS = "S"  # [[stream codec, raw bytes, stored bytes], ...] in blob order
TENSORS = "T"  # [tensor entry, ...] in state-dict order

# ---- tensor entry
NAME = "n"  # state-dict name
SHAPE = "s"  # list of dims (also the shape of an LQER factor block)
DTYPE = "d"  # the original dtype, one of ORIGINAL_DTYPES
BITS = "b"  # nominal code width, 1..8 (quantized entries only, required there)
HASH = "h"  # tensor_hash of the name, original dtype and decoded float32 tensor
PASSTHROUGH = "p"  # [stream, part type]: values stored as they are
QUANT = "q"  # quantized block: codes and scales
LQER = "l"  # [block A (rows x r), block B (r x cols)]: w += A @ B after dequantization

# ---- quantized block
CODES = "c"  # stream of int8 codes
SCALES = "k"  # stream of the scales
SCALE_TYPE = "f"  # part type of the scales, one of SCALE_TYPES
GROUP = "g"  # 0 (or absent): one scale per row; -1: one scale; g > 0: groups of g columns
TRANSPOSED = "t"  # 1: the codes are stored column by column (2-D only)
ROW_ORDER = "o"  # stream of a row permutation: stored rows are codes[order]

ORIGINAL_DTYPES = ("float32", "bfloat16", "float16", "float64")
# part type -> numpy dtype of its little-endian bytes
PART_TYPES = {"f2": "<f2", "f4": "<f4", "b2": "<u2", "i1": "i1", "u2": "<u2", "u4": "<u4"}
SCALE_TYPES = ("f2", "f4")
PASSTHROUGH_TYPES = ("f2", "f4", "b2")  # float16, float32, bfloat16 bit patterns
ROW_ORDER_U2_MAX_ROWS = 65536  # row orders of up to this many rows are stored as u2, else u4

# ---- stream codecs: [transform+]...family[-level], e.g. "deinterleave2+brotli-11": a stream codec
# as the manifest may name it. deinterleaveN (N = 2..8): byte k of every N-byte value stored
# together; the families raw, ans (no level), zlib, zstd, brotli, lzma (level; lzma "e": extreme).
STREAM_CODEC = r"(?:deinterleave[2-8]\+)*(raw|ans|(?:zlib|zstd|brotli|lzma)-\d\d?e?)"
TRANSPOSE = "transpose"  # an array transform: recorded in the block (TRANSPOSED), not the stream
ANS_LOW = 1 << 31  # rANS state lower bound: the state lives in [2**31, 2**63)
