"""What every dataset indexer returns: one record per clip with these columns, or this error."""

COLUMNS = ["path", "label", "dataset", "category", "method", "identity", "race", "gender", "age", "skin_type"]


class DatasetIndexError(ValueError):
    """The data folder does not hold the dataset it was said to hold."""
