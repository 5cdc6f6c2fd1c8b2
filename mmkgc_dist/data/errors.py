class DataError(ValueError):
    """Bad input data; the message names the file and the row, field or count that is wrong."""
