"""gRPC servicers, one per protocol, thin over the registry."""
