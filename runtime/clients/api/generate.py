"""`python -m runtime.clients.api.generate`: write the protobuf modules now (setup does, so that the
first annotated container on a node does not pay for protoc)."""
from runtime.clients import api

api.generate()
print(f"rewarm: generated {', '.join(n + '_pb2.py' for n in api.PROTOS)} in {api.HERE}")
