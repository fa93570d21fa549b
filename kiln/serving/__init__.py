"""gRPC serving of an artifact: the program's own service, the v2 tensor protocol, health, reflection.

Imports only kiln's runtime part, grpc and the artifact's generated code: never TVM's compiler.
"""
