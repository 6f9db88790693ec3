"""Generated from protos/externalscaler/externalscaler.proto by `make protos`."""
