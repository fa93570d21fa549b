"""`python -m kiln.serving.health [HOST:PORT]`: exit 0 only when grpc.health.v1 answers SERVING.

The runtime image's HEALTHCHECK; also handy as a readiness probe (Kubernetes' grpc probe does the same).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The health status name, or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main() -> int:
    from kiln.config import settings

    address = sys.argv[1] if len(sys.argv) > 1 else f"127.0.0.1:{settings().port}"
    status = check(address)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
