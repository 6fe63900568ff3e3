"""The artifact (model.blob) format: every constant, defined once; the reader (`decoder`) and the
writer (`artifact.container`) both use these names. The field table is artifact/docs/container.md.

Blob = HEAD bytes (MAGIC, VERSION u8, packed manifest length u32, raw manifest length u32, all
little-endian) + the manifest (JSON, raw deflate) + the streams back to back + CRC32 of all
before it (u32 LE).
"""

MAGIC = b"GOLF"
VERSION = 1
HEAD = 13  # magic 4 + version 1 + packed manifest length 4 + raw manifest length 4
CRC_BYTES = 4
MAX_MANIFEST = 1 << 24  # raw manifest bytes
MAX_ELEMENTS = 1 << 30  # elements of all tensors together
MAX_DIMS = 8

# ---- manifest, top level
STREAMS = "S"  # [[stream codec, raw bytes, stored bytes], ...] in blob order
TENSORS = "T"  # [tensor entry, ...] in state-dict order

# ---- tensor entry
NAME = "n"  # state-dict name
SHAPE = "s"  # list of dims (also the shape of an LQER factor block)
DTYPE = "d"  # the original dtype, one of ORIGINAL_DTYPES
BITS = "b"  # nominal code width (quantized entries)
HASH = "h"  # tensor_hash of the decoded float32 tensor
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

# ---- stream codecs: [transform+]...family[-level], e.g. "deinterleave2+brotli-11"
CODEC_FAMILIES = ("raw", "ans", "zlib", "zstd", "brotli", "lzma")
DEINTERLEAVE = "deinterleave"  # deinterleaveN: byte k of every N-byte value stored together
DEINTERLEAVE_WIDTHS = (2, 8)  # N in 2..8
TRANSPOSE = "transpose"  # an array transform: recorded in the block (TRANSPOSED), not the stream
ANS_LOW = 1 << 31  # rANS state lower bound: the state lives in [2**31, 2**63)
