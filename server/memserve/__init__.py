"""memserve: a gRPC model-serving daemon that plans and accounts every byte of model memory."""

__version__ = "0.1.0"
