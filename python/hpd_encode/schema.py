"""The Parquet layout of the part files.

The first ten columns are the reference pipeline's, same names, types and
contents, so existing trainers keep working (``ast.literal_eval`` on
``detailed_results``, ``np.load(io.BytesIO(latent1))``). The rest are typed
extras that spare readers the string parsing; readers must not require them
(files written by the reference lack them).
"""

from __future__ import annotations

import pyarrow as pa

REFERENCE_COLUMNS = [
    "prompt",
    "model1",
    "model2",
    "detailed_results",
    "image1_path",
    "image2_path",
    "latent1",
    "latent2",
    "latent1_shape",
    "latent2_shape",
]

EXTRA_COLUMNS = [
    "record_index",  # int64: position of the comparison in the metadata file
    "votes_chosen",  # int64
    "votes_rejected",  # int64
    "confidence",  # float64
    "height",  # int64: target (final) height of both images
    "width",  # int64: target (final) width
    "bucket_id",  # int32: id of (height, width) in the bucket set used
    "orig_chosen_height",  # int64: decoded size, EXIF orientation applied
    "orig_chosen_width",
    "orig_rejected_height",
    "orig_rejected_width",
]

PART_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("model1", pa.string()),
        ("model2", pa.string()),
        ("detailed_results", pa.string()),
        ("image1_path", pa.string()),
        ("image2_path", pa.string()),
        ("latent1", pa.binary()),
        ("latent2", pa.binary()),
        ("latent1_shape", pa.list_(pa.int64())),
        ("latent2_shape", pa.list_(pa.int64())),
        ("record_index", pa.int64()),
        ("votes_chosen", pa.int64()),
        ("votes_rejected", pa.int64()),
        ("confidence", pa.float64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("bucket_id", pa.int32()),
        ("orig_chosen_height", pa.int64()),
        ("orig_chosen_width", pa.int64()),
        ("orig_rejected_height", pa.int64()),
        ("orig_rejected_width", pa.int64()),
    ]
)

ROW_GROUP_SIZE = 100


def part_name(rank: int) -> str:
    """The reference's part file name for a rank."""
    return f"part_rank{rank:02d}.parquet"
