"""Generated protobuf modules (scripts/gen-protos.sh); do not edit by hand."""
