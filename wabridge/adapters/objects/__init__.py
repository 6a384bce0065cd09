"""The Objects port's adapters: S3 / MinIO / SeaweedFS (s3.py) and a directory (directory.py)."""
