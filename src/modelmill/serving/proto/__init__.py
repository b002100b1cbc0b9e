"""The OIP gRPC service, generated from the vendored KServe ``grpc_predict_v2.proto`` (scripts/gen_grpc.sh)."""
