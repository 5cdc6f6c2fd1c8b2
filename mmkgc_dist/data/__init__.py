"""Dataset layout on Parquet, converters, and negative sampling."""
