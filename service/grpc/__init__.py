"""gRPC front-ends: thin servicers that translate messages and delegate to the data plane."""
