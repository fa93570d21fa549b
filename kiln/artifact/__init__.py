"""The contract between what publishes an artifact and what serves it: the folder's layout, the typed
manifest, tensor specs and input guards, the local store, and the S3/MinIO remote (kiln.artifact.remote,
the only module here that needs the minio SDK)."""
