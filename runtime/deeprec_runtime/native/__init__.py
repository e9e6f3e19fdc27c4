"""Native gRPC front end (`deeprec-runtime serve --grpc-server native`): gRPC C++ carries the
calls, the Python data plane answers them. See grpc_frontend.cc for why and how, build.py for how
the library is built, server.py for the Python side."""
