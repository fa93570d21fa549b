"""Serving an artifact: the program's own gRPC service and the KServe v2 / Triton protocol over gRPC and HTTP,
health, reflection, statistics and Prometheus metrics.

Imports only kiln's runtime part, grpc, uvicorn/starlette, prometheus-client and the artifact's generated code:
never TVM's compiler.
"""
