"""A Python service calling token-sidecar with stubs generated from proto/ by grpcio-tools:

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/tokensidecar/v1/token_sidecar.proto
    PYTHONPATH=gen python tests/python/verify_client.py 127.0.0.1:50051 TOKEN USER

It verifies TOKEN, then asks Issue for USER and reads the refusal's google.rpc.ErrorInfo. It
prints one JSON object: what a Python service sees.
"""
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tokensidecar.v1 import token_sidecar_pb2 as pb
from tokensidecar.v1 import token_sidecar_pb2_grpc as rpc


def main():
    address, token, user = sys.argv[1], sys.argv[2], sys.argv[3]
    with grpc.insecure_channel(address) as channel:
        stub = rpc.TokenServiceStub(channel)
        verdict = stub.Verify(pb.VerifyRequest(token=token), timeout=5)
        answer = {
            "valid": verdict.valid,
            "reason": pb.Reason.Name(verdict.reason),
            "user_id": verdict.claims.user_id if verdict.valid else None,
        }
        try:
            stub.Issue(pb.IssueRequest(user_id=user), timeout=5)
            answer["issue"] = "ok"
        except grpc.RpcError as call:
            status = rpc_status.from_call(call)
            info = None
            for detail in status.details if status else []:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
            answer["issue"] = {
                "code": call.code().name,
                "reason": info.reason if info else None,
                "domain": info.domain if info else None,
            }
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
