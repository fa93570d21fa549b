"""Shipping: Docker images of artifacts (the generic runtime and one image per model), built and pushed.

    record = build_model_image(artifact, "127.0.0.1:5000/digits")   # build, tag, push, record the digest

The base defaults to the official `ubuntu:24.04`; set KILN_BASE_IMAGE (e.g. kiln/ubuntu:24.04 from
`make base-image`) where Docker Hub is out of reach.
"""

from kiln.ship.engine import check_repository, connect
from kiln.ship.images import RUNTIME_REPOSITORY, build_model_image, build_runtime_image, default_base

__all__ = ["RUNTIME_REPOSITORY", "build_model_image", "build_runtime_image", "check_repository", "connect",
           "default_base"]
