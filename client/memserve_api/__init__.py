"""What the memserve daemon and its clients share: the generated gRPC stubs (`memserve_api.pb`) and the
tensor codec (`memserve_api.tensors`). Imports nothing of either side."""
