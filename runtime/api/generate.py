"""`python -m runtime.api.generate`: write the protobuf modules now (setup does, so that the
first annotated container on a node does not pay for protoc)."""
from runtime import api

api.generate()
print(f"thaw: generated {', '.join(n + '_pb2.py' for n in api.PROTOS)} in {api.HERE}")
