"""Import (file -> ImportRecords) and export (snapshot rows -> TRL / listwise / parquet); both pure, no store."""
from neat_studio.io.exporters import (
    export_listwise,
    export_parquet,
    export_trl_pairs,
    pairs_from_row,
)
from neat_studio.io.importers import FORMATS, DataFormatError, read_records

__all__ = [
    "DataFormatError",
    "FORMATS",
    "read_records",
    "pairs_from_row",
    "export_trl_pairs",
    "export_listwise",
    "export_parquet",
]
